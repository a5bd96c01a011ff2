"""What the benchmark scripts share: `lms-api sandbox` and `pserve production.ini` as processes on free ports."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Running:
    moodle_port: int
    gateway_port: int
    gateway_pid: int
    env: dict[str, str]

    def token(self, scope: str) -> str:
        return subprocess.run(
            [BIN / "lms-api", "token", "--sub", "bench", "--scope", scope],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()


@contextmanager
def sandbox_and_gateway(sandbox_args: Sequence[str] = (), **gateway_env: str) -> Iterator[Running]:
    moodle_port, gateway_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp())
    shutil.copy(ROOT / "production.ini", workdir)
    env = {
        **os.environ,
        "MOODLE_BASE_URL": f"http://127.0.0.1:{moodle_port}",
        "MOODLE_TOKEN": MOODLE_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        **gateway_env,
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": workdir, "env": env}
    sandbox = subprocess.Popen(
        [BIN / "lms-api", "sandbox", "--port", str(moodle_port), "--token", MOODLE_TOKEN, *sandbox_args], **quiet
    )
    gateway = subprocess.Popen([BIN / "pserve", "production.ini", f"http_port={gateway_port}"], **quiet)
    try:
        wait_for(moodle_port)
        wait_for(gateway_port)
        yield Running(moodle_port, gateway_port, gateway.pid, env)
    finally:
        gateway.terminate()
        sandbox.terminate()
        gateway.wait(10)
        sandbox.wait(10)
        shutil.rmtree(workdir)


def positive(raw: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def documented_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the script's first paragraph and whose epilog is the rest, as written."""
    summary, _, details = (doc or "").partition("\n\n")
    return argparse.ArgumentParser(
        description=summary, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=details
    )
