"""Gateway memory and time for POST /api/moodle/files/upload with a large file, against a direct upload.php call.

Starts `lms-api sandbox` and `pserve production.ini` as processes, uploads a file of --mb MiB through the gateway
and straight to the sandbox, and prints the gateway's resident memory before and at its peak (VmHWM, Linux).

    .venv/bin/python scripts/bench_upload.py [--mb 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import requests
from benchlib import MOODLE_TOKEN, sandbox_and_gateway

MIB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid} (Linux only)")


def timed_upload(url: str, path: Path, **kwargs: object) -> float:
    started = time.perf_counter()
    with path.open("rb") as stream:
        response = requests.post(url, files={"file": (path.name, stream)}, timeout=300, **kwargs)
    response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.bin"
        with path.open("wb") as out:
            for _ in range(args.mb):
                out.write(os.urandom(MIB))
        with sandbox_and_gateway(MOODLE_MAX_UPLOAD_MB=str(args.mb)) as running:
            token = running.token("files:write siteinfo:read")
            gateway = f"http://127.0.0.1:{running.gateway_port}/api/moodle"
            headers = {"Authorization": f"Bearer {token}"}
            requests.get(f"{gateway}/siteinfo", headers=headers, timeout=30).raise_for_status()
            before = memory_kib(running.gateway_pid, "VmRSS")
            through = [timed_upload(f"{gateway}/files/upload", path, headers=headers) for _ in range(args.rounds)]
            peak = memory_kib(running.gateway_pid, "VmHWM")
            direct_url = f"http://127.0.0.1:{running.moodle_port}/webservice/upload.php"
            direct = [timed_upload(direct_url, path, data={"token": MOODLE_TOKEN}) for _ in range(args.rounds)]

    print(f"{args.rounds} uploads of {args.mb} MiB each")
    print(f"direct to upload.php:  best {min(direct):.2f} s")
    print(f"through the gateway:   best {min(through):.2f} s")
    print(f"gateway memory: {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB "
          f"(+{(peak - before) / 1024:.0f} MiB for a {args.mb} MiB file)")  # fmt: skip


if __name__ == "__main__":
    main()
