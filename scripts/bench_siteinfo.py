"""Gateway overhead on GET /api/moodle/siteinfo against a direct call to the same Moodle sandbox.

Starts `lms-api sandbox` and `pserve` (production settings, waitress, 16 threads) as separate processes on free
loopback ports, then measures sequential latency (median, p95) and throughput with 16 concurrent callers.

    .venv/bin/python scripts/bench_siteinfo.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MOODLE_TOKEN = "bench-token"
JWT_SECRET = "bench-secret-" + "x" * 40


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port: int) -> None:
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


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

    moodle_port, gateway_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp())
    shutil.copy(ROOT / "production.ini", workdir)
    env = {
        **os.environ,
        "MOODLE_BASE_URL": f"http://127.0.0.1:{moodle_port}",
        "MOODLE_TOKEN": MOODLE_TOKEN,
        "JWT_SECRET": JWT_SECRET,
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": workdir, "env": env}
    sandbox = subprocess.Popen(
        [BIN / "lms-api", "sandbox", "--port", str(moodle_port), "--token", MOODLE_TOKEN], **quiet
    )
    gateway = subprocess.Popen([BIN / "pserve", "production.ini", f"http_port={gateway_port}"], **quiet)
    try:
        wait_for(moodle_port)
        wait_for(gateway_port)
        token = subprocess.run(
            [BIN / "lms-api", "token", "--sub", "bench", "--scope", "siteinfo:read"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        sessions: dict[int, requests.Session] = {}

        def session() -> requests.Session:
            return sessions.setdefault(threading.get_ident(), requests.Session())

        form = {"wstoken": MOODLE_TOKEN, "wsfunction": "core_webservice_get_site_info", "moodlewsrestformat": "json"}

        def direct() -> None:
            session().post(f"http://127.0.0.1:{moodle_port}/webservice/rest/server.php", data=form).raise_for_status()

        def through_gateway() -> None:
            session().get(
                f"http://127.0.0.1:{gateway_port}/api/moodle/siteinfo", headers={"Authorization": f"Bearer {token}"}
            ).raise_for_status()

        direct_result = measure(direct, args.requests, args.concurrency)
        gateway_result = measure(through_gateway, args.requests, args.concurrency)
    finally:
        gateway.terminate()
        sandbox.terminate()
        gateway.wait(10)
        sandbox.wait(10)
        shutil.rmtree(workdir)

    print(f"{args.requests} requests each, {args.concurrency} concurrent callers for throughput")
    print(f"{'path':<22}{'median ms':>10}{'p95 ms':>10}{'req/s':>10}")
    for name, (median, p95, throughput) in (("direct to sandbox", direct_result), ("through gateway", gateway_result)):
        print(f"{name:<22}{median:>10.2f}{p95:>10.2f}{throughput:>10.0f}")
    print(f"added median latency: {gateway_result[0] - direct_result[0]:.2f} ms")


if __name__ == "__main__":
    main()
