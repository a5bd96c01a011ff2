"""Gateway overhead on GET /api/moodle/siteinfo against a direct call to the same Moodle sandbox.

Starts `lms-api sandbox` and `pserve` (production settings, waitress, 16 threads) as separate processes on free
loopback ports, then measures sequential latency (median, p95) and throughput with 16 concurrent callers.

    .venv/bin/python scripts/bench_siteinfo.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from benchlib import MOODLE_TOKEN, sandbox_and_gateway


def measure(call, total: int, concurrency: int) -> tuple[float, float, float]:
    """Median and p95 latency (ms) of sequential calls, and requests/s with `concurrency` callers."""
    for _ in range(50):
        call()
    latencies = []
    for _ in range(total):
        started = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(total)))
    throughput = total / (time.perf_counter() - started)
    return statistics.median(latencies), statistics.quantiles(latencies, n=20)[18], throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with sandbox_and_gateway(RATE_LIMIT_READ="1000000/minute") as running:  # measure the path, not the limiter
        token = running.token("siteinfo:read")
        sessions: dict[int, requests.Session] = {}

        def session() -> requests.Session:
            return sessions.setdefault(threading.get_ident(), requests.Session())

        form = {"wstoken": MOODLE_TOKEN, "wsfunction": "core_webservice_get_site_info", "moodlewsrestformat": "json"}
        moodle_url = f"http://127.0.0.1:{running.moodle_port}/webservice/rest/server.php"
        gateway_url = f"http://127.0.0.1:{running.gateway_port}/api/moodle/siteinfo"

        def direct() -> None:
            session().post(moodle_url, data=form).raise_for_status()

        def through_gateway() -> None:
            session().get(gateway_url, headers={"Authorization": f"Bearer {token}"}).raise_for_status()

        direct_result = measure(direct, args.requests, args.concurrency)
        gateway_result = measure(through_gateway, args.requests, args.concurrency)

    print(f"{args.requests} requests each, {args.concurrency} concurrent callers for throughput")
    print(f"{'path':<22}{'median ms':>10}{'p95 ms':>10}{'req/s':>10}")
    for name, (median, p95, throughput) in (("direct to sandbox", direct_result), ("through gateway", gateway_result)):
        print(f"{name:<22}{median:>10.2f}{p95:>10.2f}{throughput:>10.0f}")
    print(f"added median latency: {gateway_result[0] - direct_result[0]:.2f} ms")


if __name__ == "__main__":
    main()
