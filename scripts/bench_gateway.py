"""GET /api/moodle/siteinfo through the gateway as it is deployed, side by side with what bounds it, in one run.

Against nginx serving the recorded site info of a real Moodle 5.0 as a static file, wrk (`--latency`) loads:

1. direct: that static upstream (the floor);
2. nginx proxy: an nginx reverse proxy, keep-alive upstream, in front of it (what a gateway is compared with);
3. bare Pyramid returning the gateway's answer bytes (the ceiling), in 1 process (waitress, production.ini's thread
   count) and in 2 (gunicorn gthread, 2 workers of 16 threads as the gateway below, without gunicorn.conf.py, whose
   hooks are the gateway's);
4. the gateway on that upstream, forwarded (`Cache-Control: no-cache`, with a token holding `cache:refresh`) and
   cached (the same request without that header), in three set-ups: `pserve production.ini` without Redis;
   `pserve production.ini` with REDIS_URL (a redis-server started here); and `gunicorn --paste production.ini
   -k gthread -w 2 --threads 16` with REDIS_URL, with the repository's gunicorn.conf.py when there is one.

Each path at 1 caller (-t1 -c1) and 16 (-t2 -c16), the gateway's at 64 too (-t2 -c64): 26 points, about 3 minutes
at the default 6 s each. With `--repeat N` the paths take turns, in an order shifted at each repeat, and each figure
is the median of its N runs: on a shared machine a path measured only before or after a disturbance would not
compare. Prints one markdown table, the resident memory of each gateway process (each gunicorn worker) after the runs
and the targets, met or not, as ratios of this one run: figures from different runs do not compare. `--profile` then
records the one-process gateway with Redis with py-spy while it forwards at four callers.

Needs nginx, wrk and redis-server (Debian: `apt-get install nginx-light wrk redis-server`) and gunicorn in the venv;
`--profile` needs py-spy (`.venv/bin/pip install py-spy`). Every process runs as the invoking user on a free loopback
port; everything but the profile is written to a temporary directory that is removed at the end.

    .venv/bin/python scripts/bench_gateway.py [--duration 6] [--warmup 1] [--repeat 3] [--profile]
    .venv/bin/python scripts/bench_gateway.py --quick   # 1 s per point, no warm-up: does the script work?
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from benchlib import BIN, JWT_SECRET, MOODLE_TOKEN, ROOT, documented_parser, free_port, positive

from lms_api.settings import SETTING_NAMES

GOLDEN_SITE_INFO = ROOT / "tests" / "moodle_golden" / "core_webservice_get_site_info.json"
SITE_INFO_ROUTE = "/api/moodle/siteinfo"
# What the gateway sends to Moodle for this route; the direct paths send the same, so they differ only by the hop.
MOODLE_FORM = {"wstoken": MOODLE_TOKEN, "wsfunction": "core_webservice_get_site_info", "moodlewsrestformat": "json"}
# Far past what any set-up serves in a minute, in one process or counted in Redis by several: the path is measured,
# not the limiter, and no answer is a 429.
READ_BUDGET = "1000000000/minute"
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 16
# Read by gunicorn from its working directory by default; named here, as gunicorn runs in the temp dir (see below).
GUNICORN_CONFIG = ROOT / "gunicorn.conf.py"
PROFILE_SECONDS = 10
PROFILE_CONNECTIONS = 4
TOP_FUNCTIONS = 20
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
DEFAULT_DURATION_S = 6
DEFAULT_WARMUP_S = 1
QUICK_DURATION_S = 1

# The targets of the request path, as this run's ratios.
REDIS_CACHED_SHARE_MIN = 90  # % of the in-process cache's req/s, one process each, at 16 callers
GUNICORN_CACHED_SHARE_MIN = 50  # % of bare Pyramid's req/s in as many processes, at 16 callers
FORWARDED_RATE_MIN = 1000  # req/s at 16 callers, gunicorn with its workers
FORWARDED_P50_OVER_DIRECT_MAX_MS = 1.0  # at one caller
FORWARDED_P99_OVER_DIRECT_MAX_MS = 3.0
CACHED_P99_MAX_MS = 250.0  # at 64 callers
RSS_PER_WORKER_MAX_MIB = 150  # MB, as the *_MB settings say it: MiB

# Pyramid + one view returning the gateway's answer bytes: served by waitress when run, by gunicorn as bare_app:app.
BARE_APP = """
import os
import sys
from pathlib import Path

from pyramid.config import Configurator
from pyramid.response import Response

body = Path(os.environ["BARE_BODY"]).read_bytes()
content_type = os.environ["BARE_CONTENT_TYPE"]


def answer(request):
    return Response(body=body, content_type=None, headers={"Content-Type": content_type})


with Configurator() as config:
    config.add_route("any", "/*path")
    config.add_view(answer, route_name="any")
    app = config.make_wsgi_app()

if __name__ == "__main__":
    import waitress

    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), _quiet=True)
"""


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int


ONE_CALLER = Load(threads=1, connections=1)
SIXTEEN_CALLERS = Load(threads=2, connections=16)
SIXTY_FOUR_CALLERS = Load(threads=2, connections=64)
LOADS = (ONE_CALLER, SIXTEEN_CALLERS, SIXTY_FOUR_CALLERS)
REFERENCE_LOADS = (ONE_CALLER, SIXTEEN_CALLERS)  # of the paths that are not the gateway's: no target at 64 callers


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] | None = None
    body: str = ""
    loads: tuple[Load, ...] = REFERENCE_LOADS


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


@dataclass(frozen=True)
class GatewaySetup:
    name: str
    redis_db: int | None  # the Redis database it keeps its state in, its own; None: no REDIS_URL
    under_gunicorn: bool  # else pserve, serving in its own process


IN_PROCESS = GatewaySetup("1 process, no Redis", redis_db=None, under_gunicorn=False)
WITH_REDIS = GatewaySetup("1 process + Redis", redis_db=0, under_gunicorn=False)
GUNICORN = GatewaySetup(f"gunicorn {GUNICORN_WORKERS} workers + Redis", redis_db=1, under_gunicorn=True)
SETUPS = (IN_PROCESS, WITH_REDIS, GUNICORN)


@dataclass(frozen=True)
class Gateway:
    setup: GatewaySetup
    process: subprocess.Popen[bytes]
    redis_url: str | None
    forwarded: Target
    cached: Target

    def serving_pids(self) -> list[int]:
        """The processes that answer requests: gunicorn's workers, or pserve itself."""
        return descendants(self.process.pid) if self.setup.under_gunicorn else [self.process.pid]


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


def expect_ok(name: str, answer: Answer, body: bytes | None = None, log: str = "") -> None:
    if answer.status != 200:
        raise SystemExit(f"{name} answered HTTP {answer.status}, not 200: {answer.body[:300]!r}\n{log}".rstrip())
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
        "redis-server": "redis-server (Debian: sudo apt-get install redis-server)",
        "pserve": f"pserve in {BIN} (run this script with .venv/bin/python after `make install`)",
        "lms-api": f"lms-api in {BIN} (run this script with .venv/bin/python after `make install`)",
        "gunicorn": f"gunicorn in {BIN} (`make install`, or {BIN / 'pip'} install gunicorn)",
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


def clean_environ() -> dict[str, str]:
    """The caller's environment without what would change what is measured: the gateway's settings (a REDIS_URL,
    LOG_FORMAT=console) and gunicorn's GUNICORN_CMD_ARGS."""
    return {
        name: value for name, value in os.environ.items() if name not in SETTING_NAMES and name != "GUNICORN_CMD_ARGS"
    }


def gateway_env(moodle_url: str) -> dict[str, str]:
    return {
        **clean_environ(),
        "MOODLE_BASE_URL": moodle_url,
        "MOODLE_TOKEN": MOODLE_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_READ": READ_BUDGET,
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


def measure(
    wrk: str, targets: Sequence[Target], args: argparse.Namespace, workdir: Path, processes: Processes
) -> dict[str, dict[Load, Point]]:
    """Each target at each of its loads, `args.repeat` times: the targets take turns, from a later one at each repeat,
    so that a disturbance of the machine falls on different paths; each figure is the median of its runs."""
    scripts = {target.label: wrk_script(target, workdir) for target in targets}
    runs: dict[str, dict[Load, list[Point]]] = {target.label: {load: [] for load in target.loads} for target in targets}
    for repeat in range(args.repeat):
        shift = repeat * len(targets) // args.repeat
        for target in [*targets[shift:], *targets[:shift]]:
            script = scripts[target.label]
            if args.warmup:  # the first requests fill connection pools and caches: not the steady state
                run_wrk(wrk, target, SIXTEEN_CALLERS, args.warmup, script)
            for load in target.loads:
                point = run_wrk(wrk, target, load, args.duration, script)
                runs[target.label][load].append(point)
                print(
                    f"  [{repeat + 1}/{args.repeat}] {target.label}, c={load.connections}: {format_point(point)}",
                    file=sys.stderr,
                )
            processes.check_running()
    return {label: {load: median_point(points) for load, points in by_load.items()} for label, by_load in runs.items()}


def median_point(points: Sequence[Point]) -> Point:
    """Each figure's median over the repeats (so p50, p99 and req/s may come from different runs); every failure."""
    return Point(
        statistics.median(point.p50_ms for point in points),
        statistics.median(point.p99_ms for point in points),
        statistics.median(point.requests_per_s for point in points),
        sum(point.failed for point in points),
    )


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


def mib(memory: Memory) -> float:
    return memory.rss_kib / 1024


def memory_line(gateway: Gateway, serving: Sequence[Memory]) -> str:
    parts = "; ".join(f"pid {m.pid} {mib(m):.1f} MiB (peak {m.peak_kib / 1024:.1f})" for m in serving)
    if not gateway.setup.under_gunicorn:
        return f"- {gateway.setup.name} (pserve): {parts}"
    master = process_memory(gateway.process.pid)
    return f"- {gateway.setup.name}: workers {parts}; master pid {master.pid} {mib(master):.1f} MiB"


def print_table(results: Mapping[str, Mapping[Load, Point]]) -> None:
    columns = [f"c={load.connections} {figure}" for load in LOADS for figure in ("p50 ms", "p99 ms", "req/s")]
    print("| path | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, points in results.items():
        cells = [
            cell
            for load in LOADS
            for cell in (
                (format_ms(points[load].p50_ms), format_ms(points[load].p99_ms), f"{points[load].requests_per_s:.0f}")
                if load in points
                else ("-", "-", "-")
            )
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    failures = [
        f"{label} at c={load.connections}: {point.failed}"
        for label, points in results.items()
        for load, point in points.items()
        if point.failed
    ]
    if failures:
        print("\nWarning: requests failed (non-2xx answers or socket errors); these figures do not compare:")
        print("; ".join(failures))


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool


def verdict(target: str, measured: str, met: bool, points: Iterable[Point]) -> Verdict:
    """Not met when a request it rests on failed: a fast failure must not pass for a fast answer."""
    failed = sum(point.failed for point in points)
    if failed:
        return Verdict(target, f"{measured} ({failed} requests failed)", False)
    return Verdict(target, measured, met)


def share(part: Point, whole: Point) -> float:
    return 100 * part.requests_per_s / whole.requests_per_s


def judge(
    results: Mapping[str, Mapping[Load, Point]],
    direct: Target,
    bare_processes: Target,
    gateways: Mapping[GatewaySetup, Gateway],
    serving: Mapping[GatewaySetup, Sequence[Memory]],
) -> list[Verdict]:
    one, sixteen, many = ONE_CALLER, SIXTEEN_CALLERS, SIXTY_FOUR_CALLERS
    in_process, with_redis = results[gateways[IN_PROCESS].cached.label], results[gateways[WITH_REDIS].cached.label]
    gunicorn_cached = results[gateways[GUNICORN].cached.label][sixteen]
    gunicorn_forwarded = results[gateways[GUNICORN].forwarded.label][sixteen]
    bare = results[bare_processes.label][sixteen]
    floor = results[direct.label][one]
    verdicts = [
        verdict(
            f"cached, {WITH_REDIS.name}: req/s at c=16 at least {REDIS_CACHED_SHARE_MIN} % of cached, "
            f"{IN_PROCESS.name}",
            f"{share(with_redis[sixteen], in_process[sixteen]):.0f} % ({with_redis[sixteen].requests_per_s:.0f} vs "
            f"{in_process[sixteen].requests_per_s:.0f}; at c=1 {share(with_redis[one], in_process[one]):.0f} %)",
            share(with_redis[sixteen], in_process[sixteen]) >= REDIS_CACHED_SHARE_MIN,
            [with_redis[sixteen], in_process[sixteen]],
        ),
        verdict(
            f"cached, {GUNICORN.name}: req/s at c=16 at least {GUNICORN_CACHED_SHARE_MIN} % of bare Pyramid, "
            f"{GUNICORN_WORKERS} processes",
            f"{share(gunicorn_cached, bare):.0f} % ({gunicorn_cached.requests_per_s:.0f} vs {bare.requests_per_s:.0f})",
            share(gunicorn_cached, bare) >= GUNICORN_CACHED_SHARE_MIN,
            [gunicorn_cached, bare],
        ),
        verdict(
            f"forwarded, {GUNICORN.name}: at least {FORWARDED_RATE_MIN:,} req/s at c=16",
            f"{gunicorn_forwarded.requests_per_s:,.0f} req/s",
            gunicorn_forwarded.requests_per_s >= FORWARDED_RATE_MIN,
            [gunicorn_forwarded],
        ),
    ]
    for setup, gateway in gateways.items():
        forwarded = results[gateway.forwarded.label][one]
        added_p50, added_p99 = forwarded.p50_ms - floor.p50_ms, forwarded.p99_ms - floor.p99_ms
        verdicts.append(
            verdict(
                f"forwarded, {setup.name}: at c=1 at most +{FORWARDED_P50_OVER_DIRECT_MAX_MS:g} ms p50, "
                f"+{FORWARDED_P99_OVER_DIRECT_MAX_MS:g} ms p99 over direct",
                f"{added_p50:+.2f} ms p50, {added_p99:+.2f} ms p99",
                added_p50 <= FORWARDED_P50_OVER_DIRECT_MAX_MS and added_p99 <= FORWARDED_P99_OVER_DIRECT_MAX_MS,
                [forwarded, floor],
            )
        )
    for setup, gateway in gateways.items():
        cached = results[gateway.cached.label][many]
        target = f"cached, {setup.name}: p99 under {CACHED_P99_MAX_MS:g} ms at c={many.connections}"
        verdicts.append(verdict(target, f"{cached.p99_ms:.1f} ms", cached.p99_ms < CACHED_P99_MAX_MS, [cached]))
    for setup, memories in serving.items():
        per_process = "worker" if setup.under_gunicorn else "process"
        verdicts.append(
            verdict(
                f"{setup.name}: resident memory per {per_process} under {RSS_PER_WORKER_MAX_MIB} MiB after the run",
                (", ".join(f"{mib(memory):.1f}" for memory in memories) + " MiB") if memories else "no worker found",
                bool(memories) and all(mib(memory) < RSS_PER_WORKER_MAX_MIB for memory in memories),
                [],
            )
        )
    return verdicts


def print_verdicts(verdicts: Sequence[Verdict]) -> None:
    print("| target | measured | |")
    print("|---|---|---|")
    for each in verdicts:
        print(f"| {each.target} | {each.measured} | {'met' if each.met else 'not met'} |")


# ---------------------------------------------------------------------------------------------------- profile


def profile_gateway(tools: Mapping[str, str], gateway: Gateway, workdir: Path, output: Path) -> None:
    gateway_pid, target = gateway.process.pid, gateway.forwarded
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
        f"\nProfile: py-spy record -r 200 -f raw, {PROFILE_SECONDS} s of the gateway, {gateway.setup.name} "
        f"(pid {gateway_pid}), forwarding "
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


def start_redis(redis_server: str, processes: Processes, workdir: Path) -> int:
    """A redis-server without persistence on a free port, once it answers; returns the port."""
    port = free_port()
    argv = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = processes.start("redis", [*argv, "--dir", str(workdir)])
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"redis-server exited with status {process.returncode}:\n{processes.log_tail('redis')}")
        try:
            client.ping()
            return port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit(f"redis-server did not answer within {START_TIMEOUT_S:.0f} s:\n{processes.log_tail('redis')}")


def gunicorn_argv(gunicorn: str, port: int) -> list[str]:
    return [
        gunicorn,
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        str(GUNICORN_WORKERS),
        "--threads",
        str(GUNICORN_THREADS),
    ]


def start_gateway(
    setup: GatewaySetup,
    tools: Mapping[str, str],
    processes: Processes,
    workdir: Path,
    ini: Path,
    env: Mapping[str, str],
    redis_port: int,
    token: str,
) -> Gateway:
    port = free_port()
    redis_url = None if setup.redis_db is None else f"redis://127.0.0.1:{redis_port}/{setup.redis_db}"
    setup_env = {**env, "REDIS_URL": redis_url} if redis_url else dict(env)
    if setup.under_gunicorn:
        # In the temp dir, as pserve: a .env in the repository must not set what is measured; so gunicorn is given
        # the repository's configuration, which it would have read there.
        config = ["--config", str(GUNICORN_CONFIG)] if GUNICORN_CONFIG.exists() else []
        argv = [*gunicorn_argv(tools["gunicorn"], port), *config, "--paste", str(ini)]
    else:
        argv = [tools["pserve"], str(ini), f"http_port={port}"]
    name = "gateway-" + re.sub(r"\W+", "-", setup.name)
    process = processes.start(name, argv, env=setup_env, cwd=workdir)
    url = f"http://127.0.0.1:{port}{SITE_INFO_ROUTE}"
    authorized = {"Authorization": f"Bearer {token}"}
    gateway = Gateway(
        setup,
        process,
        redis_url,
        forwarded=Target(
            f"gateway forwarded, {setup.name}", url, headers={**authorized, "Cache-Control": "no-cache"}, loads=LOADS
        ),
        cached=Target(f"gateway cached, {setup.name}", url, headers=authorized, loads=LOADS),
    )
    expect_ok(name, wait_until_answering(name, process, processes, gateway.forwarded), log=processes.log_tail(name))
    return gateway


def check_gateway(gateway: Gateway) -> None:
    """Stop before printing a table that would name paths that were not measured: the cached path must be answered
    from the cache, the forwarded one (no-cache) forwarded, and with REDIS_URL, Redis used. The cached path is read
    twice: its entry may have expired (siteinfo's TTL) since that path's runs, and the first read refills it."""
    fetch(gateway.cached)
    cache_status = header(fetch(gateway.cached), "Cache-Status")
    forwarded_status = header(fetch(gateway.forwarded), "Cache-Status")
    if not cache_status.startswith("lms_api; hit") or not forwarded_status.startswith("lms_api; fwd=request"):
        raise SystemExit(
            f"{gateway.setup.name}: the cached path answered Cache-Status {cache_status!r} and the forwarded path "
            f"{forwarded_status!r}"
        )
    if gateway.redis_url and not redis.Redis.from_url(gateway.redis_url).dbsize():
        raise SystemExit(f"{gateway.setup.name}: the gateway kept nothing in Redis, as if it ran without REDIS_URL")


def start_bare(
    tools: Mapping[str, str], processes: Processes, workdir: Path, gateway_answer: Answer
) -> tuple[Target, Target]:
    """Bare Pyramid returning the gateway's answer bytes, in one waitress process and in gunicorn's workers."""
    (workdir / "bare_app.py").write_text(BARE_APP)
    (workdir / "answer.json").write_bytes(gateway_answer.body)
    env = {
        **clean_environ(),
        "BARE_BODY": str(workdir / "answer.json"),
        "BARE_CONTENT_TYPE": gateway_answer.headers.get("Content-Type", "application/json"),
    }
    waitress_port, gunicorn_port = free_port(), free_port()
    threads = production_threads()
    servers = {
        "bare-waitress": (
            [sys.executable, "bare_app.py", str(waitress_port), str(threads)],
            Target(f"bare Pyramid, 1 process (waitress, {threads} threads)", f"http://127.0.0.1:{waitress_port}/"),
        ),
        "bare-gunicorn": (
            [*gunicorn_argv(tools["gunicorn"], gunicorn_port), "bare_app:app"],
            Target(f"bare Pyramid, {GUNICORN_WORKERS} processes (gunicorn)", f"http://127.0.0.1:{gunicorn_port}/"),
        ),
    }
    for name, (argv, target) in servers.items():
        process = processes.start(name, argv, env=env, cwd=workdir)
        expect_ok(name, wait_until_answering(name, process, processes, target), gateway_answer.body)
    return servers["bare-waitress"][1], servers["bare-gunicorn"][1]


def run(args: argparse.Namespace) -> None:
    tools = require_tools(args.profile)
    golden = GOLDEN_SITE_INFO.read_bytes()
    json.loads(golden)  # the recording is the raw answer body; anything else must stop here, not be served

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_gateway-")))
        processes = Processes(stack, workdir)
        (workdir / "www").mkdir()
        (workdir / "www" / "siteinfo.json").write_bytes(golden)

        static_port, proxy_port = free_port(), free_port()
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

        redis_port = start_redis(tools["redis-server"], processes, workdir)
        env = gateway_env(f"http://127.0.0.1:{static_port}")
        ini = gateway_ini(workdir)
        token = mint_token(tools["lms-api"], env, workdir)
        gateways = {
            setup: start_gateway(setup, tools, processes, workdir, ini, env, redis_port, token) for setup in SETUPS
        }
        gateway_answer = fetch(gateways[IN_PROCESS].forwarded)
        expect_ok("gateway", gateway_answer)
        bare_process, bare_processes = start_bare(tools, processes, workdir, gateway_answer)

        gunicorn_config = GUNICORN_CONFIG.name if GUNICORN_CONFIG.exists() else "no gunicorn.conf.py"
        setting = (
            f"Upstream: {GOLDEN_SITE_INFO.relative_to(ROOT)} ({len(golden):,} bytes); gateway answer "
            f"{len(gateway_answer.body):,} bytes; waitress threads {production_threads()}; gunicorn gthread "
            f"{GUNICORN_WORKERS} workers x {GUNICORN_THREADS} threads ({gunicorn_config}); wrk {args.duration} s per "
            f"point, {args.warmup} s warm-up per path, median of {args.repeat} run(s); {os.cpu_count()} CPUs"
        )
        print(setting, file=sys.stderr)
        targets = [direct, proxy, bare_process, bare_processes]
        targets += [target for gateway in gateways.values() for target in (gateway.cached, gateway.forwarded)]
        results = measure(tools["wrk"], targets, args, workdir, processes)
        for gateway in gateways.values():
            check_gateway(gateway)
        serving = {
            setup: [process_memory(pid) for pid in gateway.serving_pids()] for setup, gateway in gateways.items()
        }

        print()
        print(setting)
        print()
        print_table(results)
        print()
        print("Resident memory (VmRSS) after the runs:")
        for setup, gateway in gateways.items():
            print(memory_line(gateway, serving[setup]))
        print()
        print_verdicts(judge(results, direct, bare_processes, gateways, serving))
        reference, floor = results[proxy.label][ONE_CALLER], results[direct.label][ONE_CALLER]
        print(
            f"\nThe nginx proxy adds at c=1 p50 {reference.p50_ms - floor.p50_ms:+.2f} ms, "
            f"p99 {reference.p99_ms - floor.p99_ms:+.2f} ms over direct."
        )

        if args.profile:
            profile_gateway(tools, gateways[WITH_REDIS], workdir, args.profile_output.resolve())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = documented_parser(__doc__)
    parser.add_argument(
        "--duration", type=positive, help=f"whole seconds of load per point (default {DEFAULT_DURATION_S})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"whole seconds of unmeasured load before each path, 0 for none (default {DEFAULT_WARMUP_S})",
    )
    parser.add_argument(
        "--repeat", type=positive, default=1, help="runs of every path, taking turns; figures are medians (default 1)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"check that the script works: {QUICK_DURATION_S} s per point and no warm-up unless given",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"then record the gateway, {WITH_REDIS.name}, with py-spy ({PROFILE_SECONDS} s at "
        f"c={PROFILE_CONNECTIONS}, forwarding)",
    )
    parser.add_argument(
        "--profile-output",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"bench_gateway-profile-{time.strftime('%Y%m%d-%H%M%S')}.txt",
        help="where py-spy writes its collapsed stacks (default: a time-stamped file in the system temp dir)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S
    if args.warmup is None:
        args.warmup = 0 if args.quick else DEFAULT_WARMUP_S
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
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
