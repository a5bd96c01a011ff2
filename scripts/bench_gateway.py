"""GET /api/moodle/siteinfo through the gateway, side by side with what bounds it, in one run.

Five paths, each loaded by wrk at one caller (-t1 -c1) and sixteen (-t2 -c16):

1. direct: nginx serving the recorded site info of a real Moodle 5.0 as a static file (the floor);
2. nginx proxy: an nginx reverse proxy, keep-alive upstream, in front of it (what a gateway is compared with);
3. gateway, forwarding: `pserve production.ini` on that static upstream, `Cache-Control: no-cache` on every request;
4. gateway, cached: the same request without that header, so the gateway may answer from its read cache;
5. bare Pyramid: Pyramid + waitress (production.ini's thread count) returning the gateway's answer bytes (the ceiling).

Prints a markdown table, the gateway's memory and the derived figures as ratios of this one run: figures from
different runs on a shared machine do not compare. `--profile` then records the gateway with py-spy while it
forwards at four callers.

Needs nginx and wrk (Debian: `apt-get install nginx-light wrk`); `--profile` needs py-spy (`.venv/bin/pip install
py-spy`). Every process runs as the invoking user on a free loopback port; everything but the profile is written
to a temporary directory that is removed at the end.

    .venv/bin/python scripts/bench_gateway.py [--duration 6] [--profile [--profile-output PATH]]
"""

from __future__ import annotations

import argparse
import configparser
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import FrameType
from typing import Any

from lms_api.settings import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOLDEN_SITE_INFO = ROOT / "tests" / "moodle_golden" / "core_webservice_get_site_info.json"
SITE_INFO_ROUTE = "/api/moodle/siteinfo"
MOODLE_TOKEN = "bench-token"
JWT_SECRET = "bench-secret-" + "x" * 40
# What the gateway sends to Moodle for this route; the direct paths send the same, so they differ only by the hop.
MOODLE_FORM = {"wstoken": MOODLE_TOKEN, "wsfunction": "core_webservice_get_site_info", "moodlewsrestformat": "json"}
# A real Moodle 5.0 answers core_webservice_get_site_info in 50 ms at p50 (753 functions, 51 KB, same machine class).
REAL_MOODLE_P50_MS = 50.0
PROFILE_SECONDS = 10
PROFILE_CONNECTIONS = 4
TOP_FUNCTIONS = 20
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

BARE_APP = """
import sys
from pathlib import Path

import waitress
from pyramid.config import Configurator
from pyramid.response import Response

body_path, content_type, port, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = Path(body_path).read_bytes()


def answer(request):
    return Response(body=body, content_type=None, headers={"Content-Type": content_type})


with Configurator() as config:
    config.add_route("any", "/*path")
    config.add_view(answer, route_name="any")
    app = config.make_wsgi_app()
waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
"""


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int


ONE_CALLER = Load(threads=1, connections=1)
SIXTEEN_CALLERS = Load(threads=2, connections=16)
LOADS = (ONE_CALLER, SIXTEEN_CALLERS)


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] | None = None
    body: str = ""


@dataclass(frozen=True)
class Point:
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    failed: int  # non-2xx/3xx answers plus socket errors: a fast failure must not pass for a fast answer


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes


class Processes:
    """Every process started here, stopped (TERM, then KILL) in reverse order when the block ends, however it ends."""

    def __init__(self, stack: ExitStack, logs: Path) -> None:
        self._stack = stack
        self._logs = logs
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str | Path], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self._logs / f"{name}.log").open("wb")
        self._stack.callback(log.close)
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self._stack.callback(stop, process)
        self._running[name] = process
        return process

    def check_running(self) -> None:
        """Stop the run when a server has died: the loads after it would measure connection errors."""
        for name, process in self._running.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with status {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(target: Target) -> Answer:
    url = urllib.parse.urlsplit(target.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        body = target.body.encode() if target.body else None
        connection.request(target.method, url.path, body=body, headers=dict(target.headers or {}))
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def wait_until_answering(name: str, process: subprocess.Popen[bytes], processes: Processes, target: Target) -> Answer:
    """The first answer of a freshly started server; exits with its log if it dies or never answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}:\n{processes.log_tail(name)}")
        try:
            return fetch(target)
        except (ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise SystemExit(f"{name} did not answer {target.url} within {START_TIMEOUT_S:.0f} s:\n{processes.log_tail(name)}")


def expect_ok(name: str, answer: Answer, body: bytes | None = None) -> None:
    if answer.status != 200:
        raise SystemExit(f"{name} answered HTTP {answer.status}, not 200: {answer.body[:300]!r}")
    if body is not None and answer.body != body:
        raise SystemExit(f"{name} answered {len(answer.body)} bytes that are not the expected {len(body)}")


def find_tool(name: str, *extra_dirs: Path) -> str | None:
    # /usr/sbin, where Debian puts nginx, is often missing from a non-root PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), *map(str, extra_dirs), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def require_tools(profile: bool) -> dict[str, str]:
    wanted = {
        "nginx": "nginx (Debian: sudo apt-get install nginx-light)",
        "wrk": "wrk (Debian: sudo apt-get install wrk)",
        "pserve": f"pserve in {BIN} (run this script with .venv/bin/python after `make install`)",
        "lms-api": f"lms-api in {BIN} (run this script with .venv/bin/python after `make install`)",
    }
    if profile:
        wanted["py-spy"] = f"py-spy ({BIN / 'pip'} install py-spy)"
    found = {name: find_tool(name, BIN) for name in wanted}
    missing = [wanted[name] for name, path in found.items() if path is None]
    if missing:
        raise SystemExit("missing, please install:\n  " + "\n  ".join(missing))
    return {name: path for name, path in found.items() if path is not None}


def nginx_config(workdir: Path, nginx: str, static_port: int, proxy_port: int) -> str:
    # Temp paths of every compiled-in module must be ours: the defaults under /var/lib/nginx are root's.
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True).stderr
    temp_paths = "\n".join(
        f"    {module}_temp_path {workdir / module};"
        for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--without-http_{module}_module" not in build
    )
    # As root, nginx hands its workers to `nobody`, who cannot read the private temp dir.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return f"""{user}
daemon off;
worker_processes auto;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/json;
    # nginx closes a kept-alive connection every 1,000 requests by default, waitress never: same reconnects for all.
    keepalive_requests 1000000;
{temp_paths}
    upstream static_moodle {{
        server 127.0.0.1:{static_port};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{static_port};
        root {workdir / "www"};
        location / {{
            rewrite ^ /siteinfo.json break;
            error_page 405 =200 $uri;
        }}
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://static_moodle;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def gateway_ini(workdir: Path) -> Path:
    """production.ini as it is, but listening on loopback only: a benchmark has no business on 0.0.0.0."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "production.ini")
    ini["server:main"]["host"] = "127.0.0.1"
    path = workdir / "production.ini"
    with path.open("w") as file:
        ini.write(file)
    return path


def production_threads() -> int:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "production.ini")
    return ini.getint("server:main", "threads")


def gateway_env(moodle_url: str) -> dict[str, str]:
    # Settings left in the caller's shell (a REDIS_URL, LOG_FORMAT=console) would change what is measured.
    inherited = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    return {
        **inherited,
        "MOODLE_BASE_URL": moodle_url,
        "MOODLE_TOKEN": MOODLE_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_READ": "1000000/minute",  # measure the path, not the limiter
    }


def mint_token(lms_api: str, env: Mapping[str, str], workdir: Path) -> str:
    # In the temp dir, so that a .env in the caller's directory cannot sign with another secret.
    minted = subprocess.run(
        [lms_api, "token", "--sub", "bench", "--scope", "siteinfo:read cache:refresh"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if minted.returncode != 0:
        raise SystemExit(f"lms-api token failed (status {minted.returncode}): {minted.stderr.strip()}")
    return minted.stdout.strip()


def lua_string(text: str) -> str:
    # JSON's escapes of ASCII text are valid Lua string escapes.
    return json.dumps(text, ensure_ascii=True)


def wrk_script(target: Target, workdir: Path) -> Path:
    lines = [f"wrk.method = {lua_string(target.method)}"]
    lines += [
        f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in (target.headers or {}).items()
    ]
    if target.body:
        lines.append(f"wrk.body = {lua_string(target.body)}")
    path = workdir / ("wrk-" + re.sub(r"\W+", "-", target.label) + ".lua")
    path.write_text("\n".join(lines) + "\n")
    return path


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> Point:
    """p50, p99 and req/s from `wrk --latency` output, with the failed requests it reports."""

    def percentile(percent: int) -> float:
        found = re.search(rf"^\s*{percent}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
        if not found:
            raise SystemExit(f"no {percent}% latency in wrk's output:\n{output}")
        return float(found[1]) * _UNIT_MS[found[2]]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not rate:
        raise SystemExit(f"no Requests/sec in wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(non_2xx[1]) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return Point(percentile(50), percentile(99), float(rate[1]), failed)


def wrk_argv(wrk: str, target: Target, load: Load, seconds: int, script: Path) -> list[str]:
    return [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        target.url,
    ]


def run_wrk(wrk: str, target: Target, load: Load, seconds: int, script: Path) -> Point:
    finished = subprocess.run(wrk_argv(wrk, target, load, seconds, script), capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"wrk failed on {target.label}:\n{finished.stdout}{finished.stderr}")
    return parse_wrk(finished.stdout)


def measure(wrk: str, target: Target, args: argparse.Namespace, workdir: Path) -> dict[Load, Point]:
    script = wrk_script(target, workdir)
    if args.warmup:  # the first requests fill connection pools and caches: not the steady state
        run_wrk(wrk, target, SIXTEEN_CALLERS, args.warmup, script)
    points = {}
    for load in LOADS:
        points[load] = run_wrk(wrk, target, load, args.duration, script)
        print(f"  {target.label}, c={load.connections}: {format_point(points[load])}", file=sys.stderr)
    return points


def format_ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_point(point: Point) -> str:
    failed = f", {point.failed} failed" if point.failed else ""
    return (
        f"p50 {format_ms(point.p50_ms)} ms, p99 {format_ms(point.p99_ms)} ms, {point.requests_per_s:.0f} req/s{failed}"
    )


@dataclass(frozen=True)
class Memory:
    pid: int
    rss_kib: int
    peak_kib: int


def process_memory(pid: int) -> Memory:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Memory(pid, int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0]))


def descendants(pid: int) -> list[int]:
    """Children of `pid`, recursively: pserve serves in-process, but a reloader or a forking server would not."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def memory_line(gateway_pid: int) -> str:
    memories = [process_memory(pid) for pid in [gateway_pid, *descendants(gateway_pid)]]
    parts = [f"pid {m.pid} VmRSS {m.rss_kib / 1024:.1f} MiB (peak VmHWM {m.peak_kib / 1024:.1f} MiB)" for m in memories]
    children = "no child processes" if len(memories) == 1 else f"{len(memories) - 1} child process(es)"
    total = sum(m.rss_kib for m in memories) / 1024
    return f"Gateway memory after its runs (pserve, {children}): {total:.1f} MiB resident; " + "; ".join(parts)


def print_table(results: Mapping[str, Mapping[Load, Point]]) -> None:
    print("| path | c=1 p50 ms | c=1 p99 ms | c=1 req/s | c=16 p50 ms | c=16 p99 ms | c=16 req/s |")
    print("|---|---|---|---|---|---|---|")
    for label, points in results.items():
        cells = [
            cell
            for load in LOADS
            for cell in (
                format_ms(points[load].p50_ms),
                format_ms(points[load].p99_ms),
                f"{points[load].requests_per_s:.0f}",
            )
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    failures = [
        f"{label} at c={load.connections}: {points[load].failed}"
        for label, points in results.items()
        for load in LOADS
        if points[load].failed
    ]
    if failures:
        print("\nWarning: requests failed (non-2xx answers or socket errors); these figures do not compare:")
        print("; ".join(failures))


def print_derived(
    direct: Mapping[Load, Point],
    proxy: Mapping[Load, Point],
    forwarding: Mapping[Load, Point],
    cached: Mapping[Load, Point],
    bare: Mapping[Load, Point],
) -> None:
    one = ONE_CALLER
    print(
        f"Forwarding overhead over direct at c=1: p50 +{forwarding[one].p50_ms - direct[one].p50_ms:.2f} ms, "
        f"p99 +{forwarding[one].p99_ms - direct[one].p99_ms:.2f} ms "
        f"(the nginx proxy adds p50 +{proxy[one].p50_ms - direct[one].p50_ms:.2f} ms, "
        f"p99 +{proxy[one].p99_ms - direct[one].p99_ms:.2f} ms)"
    )
    shares = ", ".join(
        f"c={load.connections} {100 * cached[load].requests_per_s / bare[load].requests_per_s:.0f} %" for load in LOADS
    )
    print(f"Cached req/s as % of bare Pyramid: {shares}")
    print(
        f"Cached vs a real Moodle (50 ms p50) at c=1 p50: {REAL_MOODLE_P50_MS / cached[one].p50_ms:.1f}x "
        f"(50 / {cached[one].p50_ms:.2f} ms)"
    )


# ---------------------------------------------------------------------------------------------------- profile


def profile_gateway(tools: Mapping[str, str], gateway_pid: int, target: Target, workdir: Path, output: Path) -> None:
    script = wrk_script(target, workdir)
    # wrk starts first and outlasts py-spy, so that every sample is taken under load.
    load = Load(threads=2, connections=PROFILE_CONNECTIONS)
    wrk = subprocess.Popen(
        wrk_argv(tools["wrk"], target, load, PROFILE_SECONDS + 3, script),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1)
        record = [tools["py-spy"], "record", "-p", str(gateway_pid), "-d", str(PROFILE_SECONDS), "-r", "200"]
        spied = subprocess.run([*record, "-f", "raw", "-o", str(output)], capture_output=True, text=True)
        wrk_output, _ = wrk.communicate(timeout=PROFILE_SECONDS + 30)
    finally:
        stop(wrk)
    if spied.returncode != 0 or not output.exists():
        raise SystemExit(
            f"py-spy failed (status {spied.returncode}); it needs ptrace rights over the gateway "
            f"(same user and kernel.yama.ptrace_scope=0, or root / CAP_SYS_PTRACE):\n{spied.stderr.strip()}"
        )
    print(
        f"\nProfile: py-spy record -r 200 -f raw, {PROFILE_SECONDS} s of the gateway (pid {gateway_pid}) forwarding "
        f"at c={PROFILE_CONNECTIONS} ({format_point(parse_wrk(wrk_output))} under the profiler)"
    )
    print(f"Wrote {output}")
    print_hottest(output.read_text(errors="replace"))


_FRAME_LINE = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Frames that mean "inside a request": a wait below one is time a caller waits, a wait elsewhere is an idle thread.
_IN_REQUEST = "WSGITask.execute ("


def short_file(path: str) -> str:
    for marker in ("/site-packages/", f"{ROOT}/", "/lib/python3"):
        if marker in path:
            kept = path.split(marker, 1)[1]
            return kept.split("/", 1)[1] if marker == "/lib/python3" and "/" in kept else kept
    return path


def frame_name(frame: str) -> tuple[str, str]:
    parsed = _FRAME_LINE.match(frame)
    return (parsed["function"], short_file(parsed["file"])) if parsed else (frame, "")


@dataclass(frozen=True)
class Samples:
    own: Counter[str]  # per function (line numbers merged), samples in which it was the innermost frame
    counted: int
    idle: int  # waitress threads waiting for work, which py-spy may count as active


def own_samples(collapsed: str) -> Samples:
    own: Counter[str] = Counter()
    counted = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        function, file = frame_name(frames[-1])
        if file == "threading.py":  # a lock or a condition says little; what waits on it says what is slow
            if not any(_IN_REQUEST in frame for frame in frames):
                idle += int(count)
                continue
            depth = len(frames) - 1
            while depth > 0 and frame_name(frames[depth - 1])[1] == "threading.py":
                depth -= 1
            caller, caller_file = frame_name(frames[depth - 1]) if depth else ("?", "")
            function, file = f"{frame_name(frames[depth])[0]} in {caller}", caller_file
        own[f"{function} ({file})"] += int(count)
        counted += int(count)
    return Samples(own, counted, idle)


def print_hottest(collapsed: str) -> None:
    samples = own_samples(collapsed)
    if not samples.counted:
        print("The profile holds no samples.")
        return
    print(
        f"\nTop {TOP_FUNCTIONS} functions by own samples, of {samples.counted} samples of threads at work "
        f"({samples.idle} samples of waitress threads idle between requests left out):\n"
    )
    print("| own samples | % | function (file) |")
    print("|---|---|---|")
    for name, count in samples.own.most_common(TOP_FUNCTIONS):
        print(f"| {count} | {100 * count / samples.counted:.1f} | {name} |")


# ---------------------------------------------------------------------------------------------------- main


def header(answer: Answer, name: str) -> str:
    return answer.headers.get(name) or "(absent)"


@contextmanager
def stopped_on_sigterm() -> Iterator[None]:
    """A SIGTERM unwinds like Ctrl-C does, so that every started process is stopped on the way out."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> None:
    tools = require_tools(args.profile)
    golden = GOLDEN_SITE_INFO.read_bytes()
    json.loads(golden)  # the recording is the raw answer body; anything else must stop here, not be served
    threads = production_threads()

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_gateway-")))
        processes = Processes(stack, workdir)
        (workdir / "www").mkdir()
        (workdir / "www" / "siteinfo.json").write_bytes(golden)

        static_port, proxy_port, gateway_port, bare_port = (free_port() for _ in range(4))
        (workdir / "nginx.conf").write_text(nginx_config(workdir, tools["nginx"], static_port, proxy_port))
        nginx = processes.start(
            "nginx",
            [tools["nginx"], "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "nginx.log")],
        )
        form = urllib.parse.urlencode(MOODLE_FORM)
        moodle_headers = {"Content-Type": "application/x-www-form-urlencoded"}
        direct = Target(
            "direct to static nginx",
            f"http://127.0.0.1:{static_port}/webservice/rest/server.php",
            "POST",
            moodle_headers,
            form,
        )
        proxy = Target(
            "nginx reverse proxy",
            f"http://127.0.0.1:{proxy_port}/webservice/rest/server.php",
            "POST",
            moodle_headers,
            form,
        )
        expect_ok("static nginx", wait_until_answering("nginx", nginx, processes, direct), golden)
        expect_ok("nginx proxy", fetch(proxy), golden)

        env = gateway_env(f"http://127.0.0.1:{static_port}")
        gateway = processes.start(
            "gateway", [tools["pserve"], str(gateway_ini(workdir)), f"http_port={gateway_port}"], env=env, cwd=workdir
        )
        token = mint_token(tools["lms-api"], env, workdir)
        gateway_url = f"http://127.0.0.1:{gateway_port}{SITE_INFO_ROUTE}"
        forwarding = Target(
            "gateway, forwarding",
            gateway_url,
            headers={"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"},
        )
        cached = Target("gateway, cached", gateway_url, headers={"Authorization": f"Bearer {token}"})
        gateway_answer = wait_until_answering("gateway", gateway, processes, forwarding)
        expect_ok("gateway", gateway_answer)

        (workdir / "answer.json").write_bytes(gateway_answer.body)
        content_type = gateway_answer.headers.get("Content-Type", "application/json")
        bare_argv = [
            sys.executable,
            "-c",
            BARE_APP,
            str(workdir / "answer.json"),
            content_type,
            str(bare_port),
            str(threads),
        ]
        bare_process = processes.start("bare", bare_argv, cwd=workdir)
        bare = Target("bare Pyramid + waitress", f"http://127.0.0.1:{bare_port}/api/moodle/siteinfo")
        expect_ok("bare Pyramid app", wait_until_answering("bare", bare_process, processes, bare), gateway_answer.body)

        setting = (
            f"Upstream: {GOLDEN_SITE_INFO.relative_to(ROOT)} ({len(golden):,} bytes); gateway answer "
            f"{len(gateway_answer.body):,} bytes; waitress threads {threads}; wrk {args.duration} s per point, "
            f"{args.warmup} s warm-up per path; {os.cpu_count()} CPUs"
        )
        print(setting, file=sys.stderr)
        results = {}
        for target in (direct, proxy, forwarding, cached):
            results[target.label] = measure(tools["wrk"], target, args, workdir)
            processes.check_running()
        # Read after the cached path's runs, so the cache, if any, is warm; no-cache shows that path 3 forwards.
        cache_status = header(fetch(cached), "Cache-Status")
        forwarding_status = header(fetch(forwarding), "Cache-Status")
        if not cache_status.startswith("lms_api; hit") or not forwarding_status.startswith("lms_api; fwd=request"):
            raise SystemExit(  # the table would name paths that were not measured
                f"the cached path answered Cache-Status {cache_status!r} and the forwarding path {forwarding_status!r}"
            )
        memory = memory_line(gateway.pid)
        results[bare.label] = measure(tools["wrk"], bare, args, workdir)
        processes.check_running()

        print()
        print(setting)
        print()
        print_table(results)
        print()
        print(memory)
        print(f"Cache-Status on the cached path: {cache_status} (with Cache-Control: no-cache: {forwarding_status})")
        print_derived(*(results[target.label] for target in (direct, proxy, forwarding, cached, bare)))

        if args.profile:
            profile_gateway(tools, gateway.pid, forwarding, workdir, args.profile_output.resolve())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    summary, _, details = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=details,
    )
    parser.add_argument("--duration", type=int, default=6, help="whole seconds of load per point (default 6)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="whole seconds of unmeasured load before each path, 0 for none (default 1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"then record the gateway with py-spy ({PROFILE_SECONDS} s at c={PROFILE_CONNECTIONS}, forwarding)",
    )
    parser.add_argument(
        "--profile-output",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"bench_gateway-profile-{time.strftime('%Y%m%d-%H%M%S')}.txt",
        help="where py-spy writes its collapsed stacks (default: a time-stamped file in the system temp dir)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration must be at least 1 second and --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with stopped_on_sigterm():
            run(args)
    except KeyboardInterrupt:
        raise SystemExit("interrupted; every process started here has been stopped") from None


if __name__ == "__main__":
    main()
