"""Time per request of the rate limiter alone, one thread: what the tween asks of it for one request.

For one request the tween makes one counter hit and builds the `RateLimit-*` headers from its decision; this script
does exactly that, round-robin over 200 callers of a 600/minute budget, so that no hit is refused: with lms_api's
Redis counter (`RedisCounter`, one Lua call, on a throw-away `redis-server` started here on a free loopback port and
stopped at the end) and with its in-process counter (`LocalCounter`). Each run uses callers of its own (fresh
windows); after it, one more request on its first caller must show every hit counted. Prints the median of the runs'
µs per request, with the fastest and slowest run, under a floor: one Redis PING through redis-py, timed alike (the
loopback round trip, which on a virtual machine is most of a Redis counter's time).

With --compare-limits, the same with the `limits` package's fixed window, moving window and sliding window counter,
in Redis and in memory, each with the `hit` and the `get_window_stats` call that the RateLimit-* headers need (the
headers built alike). `limits` is not a dependency of the project: install it in a scratch virtualenv that has the
project too, e.g. `python3 -m venv /tmp/rl && /tmp/rl/bin/pip install -e . 'limits[redis]'`, and run the script
with that interpreter.

Needs redis-server (Debian: `apt-get install redis-server`).

    .venv/bin/python scripts/bench_ratelimit.py [--requests 20000] [--runs 5] [--compare-limits]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from benchlib import documented_parser, positive

from lms_api.ratelimit import KEY_PREFIX, LocalCounter, RedisCounter
from lms_api.settings import Rate

CALLERS = 200
RATE = Rate(600, 60)
WARMUP_REQUESTS = 1000
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LIMITS_MISSING = (
    "--compare-limits needs the limits package, which the project does not depend on: "
    "pip install 'limits[redis]' in a scratch virtualenv with the project (see --help)"
)

Headers = dict[str, str]


@dataclass(frozen=True)
class Contender:
    label: str
    request: Callable[[str], Headers]  # one request's work for the caller key: the RateLimit-* headers
    exact: bool = True  # RateLimit-Remaining counts every hit of the window (the sliding counter weighs the last one)
    stored: Callable[[str], int] | None = None  # the count Redis holds for a key, where that is lms_api's to read


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis on a free loopback port that keeps nothing on disk; its URL. Stopped (TERM, then KILL) at the end."""
    binary = shutil.which("redis-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if binary is None:
        raise SystemExit("redis-server is missing, please install it (Debian: sudo apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-ratelimit-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until_answering(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_until_answering(url: str, server: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"redis-server exited with status {server.returncode}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit(f"redis-server did not answer on {url} within {START_TIMEOUT_S:.0f} s")


def lms_api_contenders(url: str) -> list[Contender]:
    local = LocalCounter()
    shared = RedisCounter.from_url(url)
    reader = redis.Redis.from_url(url)

    def stored(key: str) -> int:
        return int(reader.get(KEY_PREFIX + key) or 0)

    return [
        Contender("lms_api RedisCounter (one Lua call)", lambda key: shared.hit(key, RATE).headers(), stored=stored),
        Contender("lms_api LocalCounter", lambda key: local.hit(key, RATE).headers()),
    ]


def limits_contenders(url: str) -> list[Contender]:
    from limits import RateLimitItemPerMinute
    from limits.storage import MemoryStorage, RedisStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    item = RateLimitItemPerMinute(RATE.count, RATE.period_s // 60)

    def with_headers(limiter: Any) -> Callable[[str], Headers]:
        def request(key: str) -> Headers:
            allowed = limiter.hit(item, key)
            stats = limiter.get_window_stats(item, key)  # limits' hit answers allowed or not, nothing else
            reset_s = max(1, math.ceil(stats.reset_time - time.time()))
            headers = {
                "RateLimit-Limit": str(item.amount),
                "RateLimit-Remaining": str(stats.remaining),
                "RateLimit-Reset": str(reset_s),
            }
            if not allowed:
                headers["Retry-After"] = str(reset_s)
            return headers

        return request

    # The same client options as lms_api's Redis client (lms_api.redisstate.redis_client).
    options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry_on_timeout": False}
    contenders = []
    for where, storage in (("Redis", lambda: RedisStorage(url, **options)), ("memory", MemoryStorage)):
        contenders += [
            Contender(f"limits fixed window, {where}", with_headers(FixedWindowRateLimiter(storage()))),
            Contender(f"limits moving window, {where}", with_headers(MovingWindowRateLimiter(storage()))),
            Contender(
                f"limits sliding window counter, {where}",
                with_headers(SlidingWindowCounterRateLimiter(storage())),
                exact=False,
            ),
        ]
    return contenders


def callers(tag: str) -> list[str]:
    return [f"read:bench-{tag}-caller-{number}" for number in range(CALLERS)]


def check_counted(contender: Contender, key: str, hits: int) -> None:
    """One more request on a caller hit `hits` times: every hit must be counted, none refused."""
    headers = contender.request(key)
    remaining = int(headers["RateLimit-Remaining"])
    expected = RATE.count - hits - 1
    counted = remaining == expected if contender.exact else expected <= remaining < RATE.count - 1
    if "Retry-After" in headers or not counted:
        raise SystemExit(f"{contender.label}: after {hits + 1} hits on one caller, the headers say {headers}")
    if contender.stored is not None and contender.stored(key) != hits + 1:
        raise SystemExit(f"{contender.label}: Redis holds {contender.stored(key)} for {hits + 1} hits (a fallback?)")


def timed_run(contender: Contender, tag: str, requests: int) -> float:
    keys = callers(tag)
    order = [keys[number % CALLERS] for number in range(requests)]
    request = contender.request
    started = time.perf_counter()
    for key in order:
        request(key)
    elapsed = time.perf_counter() - started
    check_counted(contender, keys[0], len(order[::CALLERS]))
    return elapsed / requests * 1e6


def bench(contender: Contender, number: int, args: argparse.Namespace) -> None:
    for key in callers(f"{number}-warmup") * (WARMUP_REQUESTS // CALLERS):
        contender.request(key)
    runs = [timed_run(contender, f"{number}-run-{run}", args.requests) for run in range(args.runs)]
    print(
        f"{contender.label:42} {statistics.median(runs):7.1f} µs/request  (runs {min(runs):.1f} to {max(runs):.1f})",
        flush=True,
    )


def ping_round_trip(url: str, args: argparse.Namespace) -> None:
    """What any Redis counter pays at least: one PING through redis-py, timed as the counters are."""
    client = redis.Redis.from_url(url)
    runs = []
    for _ in range(args.runs):
        started = time.perf_counter()
        for _ in range(args.requests):
            client.ping()
        runs.append((time.perf_counter() - started) / args.requests * 1e6)
    print(
        f"{'floor: Redis PING round trip (redis-py)':42} {statistics.median(runs):7.1f} µs/request  "
        f"(runs {min(runs):.1f} to {max(runs):.1f})",
        flush=True,
    )


def run(args: argparse.Namespace) -> None:
    if args.compare_limits and importlib.util.find_spec("limits") is None:
        print(LIMITS_MISSING, file=sys.stderr)
        raise SystemExit(2)
    print(
        f"{CALLERS} callers at {RATE.count}/{RATE.period_s} s, {args.requests} requests per run, median of "
        f"{args.runs} runs, one thread; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        + " ".join(f"{load:.2f}" for load in os.getloadavg()),
        flush=True,
    )
    with redis_server() as url:
        ping_round_trip(url, args)
        contenders = lms_api_contenders(url)
        if args.compare_limits:
            contenders += limits_contenders(url)
        for number, contender in enumerate(contenders):
            bench(contender, number, args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = documented_parser(__doc__)
    parser.add_argument(
        "--requests",
        type=positive,
        default=20_000,
        help=f"requests per run, at most {CALLERS * (RATE.count - 1)} so that none is refused (default 20000)",
    )
    parser.add_argument(
        "--runs", type=positive, default=5, help="timed runs per counter; the median is printed (default 5)"
    )
    parser.add_argument(
        "--compare-limits",
        action="store_true",
        help="also time the limits package's limiters (pip install 'limits[redis]' in a scratch virtualenv)",
    )
    args = parser.parse_args(argv)
    # Each caller takes requests/CALLERS hits in a run, plus the one that checks them: all within its budget.
    if math.ceil(args.requests / CALLERS) + 1 > RATE.count:
        parser.error(f"--requests must be at most {CALLERS * (RATE.count - 1)}, so that no request is refused")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
