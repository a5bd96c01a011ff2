"""In-process cost of GET /api/moodle/siteinfo through the whole WSGI app: no waitress, no socket to the gateway.

Each request is `webob.Request.blank(...).get_response(app)` on the app `lms_api.config.make_app` builds, so the
figure is the gateway's own work (tweens, security, rate limit, cache, view, JSON) and moves less with the host's load
than a wrk run does. Two Moodles, each answering from a thread of this process:

- sandbox: the built-in Moodle sandbox and its small site info;
- recorded: a stand-in answering the recorded site info of a real Moodle 5.0 (753 functions, 51 KB).

Two paths on each: cached (every request a read-cache hit, checked on Cache-Status and on Moodle's call count) and
forwarded (`Cache-Control: no-cache` with a token holding `cache:refresh`, so every request asks Moodle: checked on
`fwd=request` and the call count). The summary line the gateway logs for each request is rendered as usual, then
written to /dev/null.

Prints, per Moodle and path, wall-clock µs per request for each round and the best, with CPU per request in the
best round: the whole process's (the log writer and the Moodle thread included) and the request thread's alone.

    .venv/bin/python scripts/bench_inprocess.py [--rounds 5] [--requests N]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import jwt
from benchlib import documented_parser, positive
from webob import Request

from lms_api.config import make_app
from lms_api.settings import load_settings
from moodle_sandbox.server import start_sandbox

ROOT = Path(__file__).resolve().parents[1]
RECORDED_SITE_INFO = ROOT / "tests" / "moodle_golden" / "core_webservice_get_site_info.json"
SITE_INFO_ROUTE = "/api/moodle/siteinfo"
SITE_INFO_FUNCTION = "core_webservice_get_site_info"
RECORDED_TOKEN = "bench-token"
JWT_SECRET = "bench-secret-" + "x" * 40
SCOPE = "siteinfo:read cache:refresh"
TOKEN_TTL_S = 3600
CACHED_HIT = "lms_api; hit"
FORWARDED = "lms_api; fwd=request"


class RecordedMoodle(ThreadingHTTPServer):
    """Answers every web-service call with the recorded site info, and counts the calls."""

    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _RecordedHandler)
        self.body = body
        self.calls = 0
        self.calls_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RecordedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sandbox and a real Moodle behind a web server
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: RecordedMoodle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.calls_lock:
            self.server.calls += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)


@dataclass(frozen=True)
class Moodle:
    label: str
    url: str
    token: str
    calls: Callable[[], int]  # site-info calls Moodle has answered so far


@contextmanager
def sandbox_moodle() -> Iterator[Moodle]:
    server = start_sandbox()

    def calls() -> int:
        with server.state_lock:
            return server.calls[SITE_INFO_FUNCTION]

    try:
        yield Moodle("sandbox", server.url, server.token, calls)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def recorded_moodle() -> Iterator[Moodle]:
    server = RecordedMoodle(RECORDED_SITE_INFO.read_bytes())
    threading.Thread(target=server.serve_forever, name="recorded-moodle", daemon=True).start()

    def calls() -> int:
        with server.calls_lock:
            return server.calls

    try:
        yield Moodle("recorded Moodle 5.0", server.url, RECORDED_TOKEN, calls)
    finally:
        server.shutdown()
        server.server_close()


def caller_token() -> str:
    now = int(time.time())
    claims = {"sub": "bench", "scope": SCOPE, "iat": now, "nbf": now, "exp": now + TOKEN_TTL_S}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def gateway(moodle: Moodle, log_stream: TextIO) -> Any:
    # Only these keys: settings left in the caller's shell (a REDIS_URL, LOG_FORMAT=console) would change the figure.
    environ = {
        "MOODLE_BASE_URL": moodle.url,
        "MOODLE_TOKEN": moodle.token,
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_READ": "1000000000/minute",  # measure the path, not the limiter's refusals
    }
    settings = load_settings({"lms_api.environment": "production"}, environ)
    with redirect_stderr(log_stream):  # the log handler writes to the stderr of the moment it is built
        return make_app(settings)


@dataclass(frozen=True)
class SiteInfoPath:
    label: str
    headers: dict[str, str]
    cache_status: str  # what Cache-Status must start with
    moodle_calls_per_request: int
    default_requests: int


def paths(token: str) -> tuple[SiteInfoPath, SiteInfoPath]:
    bearer = {"Authorization": f"Bearer {token}"}
    return (
        SiteInfoPath("cached", bearer, CACHED_HIT, 0, 2000),
        SiteInfoPath("forwarded", {**bearer, "Cache-Control": "no-cache"}, FORWARDED, 1, 300),
    )


@dataclass(frozen=True)
class Round:
    wall_us: float
    process_cpu_us: float
    thread_cpu_us: float


def checked_get(app: Any, moodle: Moodle, path: SiteInfoPath) -> bytes:
    response = Request.blank(SITE_INFO_ROUTE, headers=path.headers).get_response(app)
    status = response.headers.get("Cache-Status", "")
    if response.status_int != 200 or not status.startswith(path.cache_status):
        raise SystemExit(
            f"{moodle.label}, {path.label}: HTTP {response.status_int}, Cache-Status {status!r} "
            f"(expected {path.cache_status!r}): {response.body[:300]!r}"
        )
    return bytes(response.body)


def measure_round(app: Any, moodle: Moodle, path: SiteInfoPath, requests: int) -> Round:
    calls_before = moodle.calls()
    blank, get_response, headers = Request.blank, Request.get_response, path.headers
    started, started_cpu, started_thread = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(requests):
        response = get_response(blank(SITE_INFO_ROUTE, headers=headers), app)
        if response.status_int != 200:
            raise SystemExit(f"{moodle.label}, {path.label}: HTTP {response.status_int}: {response.body[:300]!r}")
    wall, cpu, thread = (
        time.perf_counter() - started,
        time.process_time() - started_cpu,
        time.thread_time() - started_thread,
    )
    # Counted at Moodle rather than read on each answer, so that checking costs nothing inside the timed loop.
    calls = moodle.calls() - calls_before
    if calls != requests * path.moodle_calls_per_request:
        raise SystemExit(
            f"{moodle.label}, {path.label}: Moodle answered {calls} site-info calls for {requests} requests, "
            f"not {requests * path.moodle_calls_per_request}"
        )
    checked_get(app, moodle, path)
    return Round(wall / requests * 1e6, cpu / requests * 1e6, thread / requests * 1e6)


def bench(moodle: Moodle, args: argparse.Namespace, log_stream: TextIO) -> None:
    app = gateway(moodle, log_stream)
    token = caller_token()
    cached, forwarded = paths(token)
    Request.blank(SITE_INFO_ROUTE, headers=cached.headers).get_response(app)  # the miss that fills the cache
    answer = b""
    for path in (cached, forwarded):
        answer = checked_get(app, moodle, path)
        requests = args.requests or path.default_requests
        rounds = [measure_round(app, moodle, path, requests) for _ in range(args.rounds)]
        best = min(rounds, key=lambda measured: measured.wall_us)
        print(
            f"{moodle.label:20} {path.label:9} {requests:5} req/round  µs/request: "
            + " ".join(f"{measured.wall_us:7.1f}" for measured in rounds)
            + f"  best {best.wall_us:7.1f}  |  CPU µs/request (best round): process {best.process_cpu_us:7.1f}, "
            f"request thread {best.thread_cpu_us:7.1f}",
            flush=True,
        )
    print(f"{'':20} answer {len(answer):,} bytes", flush=True)


def run(args: argparse.Namespace) -> None:
    print(
        f"GET {SITE_INFO_ROUTE} in process; {args.rounds} rounds per path; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}",
        flush=True,
    )
    # Kept open to the end: the log writer thread flushes it again when logging shuts down at exit.
    log_stream = open(os.devnull, "w")  # noqa: SIM115
    for moodle in (sandbox_moodle, recorded_moodle):
        with moodle() as running:
            bench(running, args, log_stream)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = documented_parser(__doc__)
    parser.add_argument("--rounds", type=positive, default=5, help="timed rounds per Moodle and path (default 5)")
    parser.add_argument(
        "--requests",
        type=positive,
        help="requests per round on every path (default 2000 on the cached path, 300 on the forwarded one)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
