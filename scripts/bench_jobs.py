"""One background job of many enrolments, on each job engine: the embedded one, and RQ with one worker.

The sandbox (`lms-api sandbox`, its own process, max_input_vars 5000) is first given `--enrolments` users, created
directly through its `core_user_create_users` in batches, and a course. Then, for each engine, a `pserve
production.ini` gateway (and, for RQ, a `redis-server` and one `lms-api worker`) is started and sent one
`POST /api/moodle/enrol` with `Prefer: respond-async` enrolling every user; the job is polled until it ends.

Prints, for each engine, the wall-clock time from the request to the job's end, the gateway's 202 time, the Moodle
calls made, and the peak memory (RSS high-water mark, VmHWM) of the gateway and of the worker.

    .venv/bin/python scripts/bench_jobs.py [--enrolments 5000]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from bench_users import Sandbox, new_users
from benchlib import BIN, ROOT, documented_parser, free_port, positive, sandbox_and_gateway, wait_for

SEED_BATCH = 500  # users per direct call: 3,000 variables, under the sandbox's max_input_vars
FINISHED = {"succeeded", "failed", "partial", "cancelled"}
UNLIMITED = {"RATE_LIMIT_READ": "1000000/minute", "RATE_LIMIT_WRITE": "1000000/minute"}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for {pid}")


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port, folder = free_port(), tempfile.mkdtemp()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder)


def seed(sandbox: Sandbox, count: int) -> tuple[list[int], int]:
    """``count`` new users and a course on the sandbox: the users' ids and the course's."""
    users = new_users(count, f"job{os.getpid()}x")
    ids: list[int] = []
    for start in range(0, count, SEED_BATCH):
        ids += [user["id"] for user in sandbox.call("core_user_create_users", users=users[start : start + SEED_BATCH])]
    course = {"fullname": "Bench jobs", "shortname": f"BJ{os.getpid()}{time.monotonic_ns()}", "categoryid": 1}
    return ids, sandbox.call("core_course_create_courses", courses=[course])[0]["id"]


def run_job(gateway: str, token: str, user_ids: list[int], course_id: int) -> dict[str, Any]:
    body = {"enrolments": [{"roleid": "student", "userid": user, "courseid": course_id} for user in user_ids]}
    headers = {"Authorization": f"Bearer {token}", "Prefer": "respond-async"}
    started = time.perf_counter()
    answer = requests.post(f"{gateway}/api/moodle/enrol", json=body, headers=headers, timeout=600)
    accepted = time.perf_counter() - started
    if answer.status_code != 202:
        raise SystemExit(f"the enrolment was answered {answer.status_code}: {answer.text[:500]}")
    location = gateway + answer.headers["Location"]
    while True:
        job = requests.get(location, headers=headers, timeout=30).json()["data"]
        if job["state"] in FINISHED:
            break
        time.sleep(0.05)
    if job["state"] != "succeeded":
        raise SystemExit(f"the job ended {job['state']}: {job.get('error')}")
    return {"wall_s": time.perf_counter() - started, "accepted_ms": accepted * 1000}


def main() -> None:
    parser = documented_parser(__doc__)
    parser.add_argument("--enrolments", type=positive, default=5000)
    options = parser.parse_args()
    rows = []
    for engine in ("embedded", "rq"):
        with redis_server() as redis_url:
            environ = {**UNLIMITED, "LOG_FORMAT": "json"}
            if engine == "rq":
                environ |= {"JOBS_ENGINE": "rq", "REDIS_URL": redis_url}
            with sandbox_and_gateway(**environ) as running:
                sandbox = Sandbox(running.moodle_port)
                user_ids, course_id = seed(sandbox, options.enrolments)
                worker = None
                if engine == "rq":
                    worker = subprocess.Popen(
                        [BIN / "lms-api", "worker", "--ini", str(ROOT / "production.ini")],
                        env=running.env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                try:
                    before = sandbox.calls().get("enrol_manual_enrol_users", 0)
                    token = running.token("enrol:write jobs:read")
                    measured = run_job(f"http://127.0.0.1:{running.gateway_port}", token, user_ids, course_id)
                    measured["calls"] = sandbox.calls()["enrol_manual_enrol_users"] - before
                    measured["gateway_mib"] = peak_rss_mib(running.gateway_pid)
                    measured["worker_mib"] = None if worker is None else peak_rss_mib(worker.pid)
                finally:
                    if worker is not None:
                        worker.terminate()
                        worker.wait(10)
                rows.append((engine, measured))
    print(f"{options.enrolments} enrolments in one job (Prefer: respond-async), sandbox max_input_vars 5000")
    print(f"{'engine':<10}{'wall s':>8}{'202 ms':>9}{'calls':>7}{'gateway MiB':>13}{'worker MiB':>12}")
    for engine, row in rows:
        worker_mib = "-" if row["worker_mib"] is None else f"{row['worker_mib']:.1f}"
        print(
            f"{engine:<10}{row['wall_s']:>8.2f}{row['accepted_ms']:>9.0f}{row['calls']:>7}"
            f"{row['gateway_mib']:>13.1f}{worker_mib:>12}"
        )


if __name__ == "__main__":
    main()
