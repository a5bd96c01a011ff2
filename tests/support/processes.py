"""Real processes a test starts on free ports, ``pserve`` with the ini files and ``lms-api sandbox``, run from a
folder of their own with none of the caller's secrets in their environment."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.paths import ROOT
from tests.support.servers import free_port

BIN = Path(sys.executable).parent
SECRET_KEYS = ("MOODLE_BASE_URL", "MOODLE_TOKEN", "JWT_SECRET", "JWT_AUDIENCE", "JWT_ISSUER", "JWT_ALGORITHMS")


def clean_env(**extra):
    env = {key: value for key, value in os.environ.items() if key not in SECRET_KEYS}
    return {**env, **extra}


def wait_for_port(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited early: {process.communicate()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


def _interruptible():
    """In the child: Ctrl-C (SIGINT) stops it, as when a person starts it from a terminal, even when the test run was
    started in the background, whose jobs the shell makes ignore SIGINT (and the ignoring is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Processes:
    """Processes run from ``folder``, stopped together by :meth:`stop_all`: a test's own (``spawn``), or a module's
    that its tests share (a module fixture makes one in a folder of its own)."""

    def __init__(self, folder):
        self.folder = folder
        self.started = []

    def __call__(self, *args, env, log=None):
        """``log``: a file name in the folder for the output, for a process that writes much (a pipe nobody reads
        fills up and stalls it); else the output is read when the process ends. ``pserve`` runs the repository's ini
        of that name, or the test's own variant when the test wrote one in the folder first."""
        # Run from an empty folder with a copy of the ini, so a developer's own .env cannot leak in.
        if args[0] == "pserve" and not (self.folder / args[1]).exists():
            shutil.copy(ROOT / args[1], self.folder / args[1])
        output = open(self.folder / log, "w") if log else subprocess.PIPE  # noqa: SIM115  # the process owns it
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            cwd=self.folder,
            env=env,
            stdout=output,
            stderr=output if log else subprocess.PIPE,
            text=True,
            preexec_fn=_interruptible,
        )
        if log:
            output.close()
        self.started.append(process)
        return process

    def sandbox(self, token):
        """``lms-api sandbox`` with ``token``, listening: its base URL."""
        port = free_port()
        wait_for_port(port, self("lms-api", "sandbox", "--port", str(port), "--token", token, env=clean_env()))
        return f"http://127.0.0.1:{port}"

    def stop_all(self):
        for process in self.started:
            process.terminate()
        for process in self.started:
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def queue_remote_fault(base_url, token, **fault):
    """Queue ``fault`` (the sandbox's fault fields: kind, function, seconds...) on the sandbox process at ``base_url``
    whose token is ``token``."""
    response = requests.post(
        f"{base_url}/__sandbox__/faults", json=fault, headers={"X-Sandbox-Token": token}, timeout=5
    )
    assert response.ok, response.text


def open_descriptors(process):
    """The numbers of the files and sockets ``process`` holds open now."""
    return [int(name) for name in os.listdir(f"/proc/{process.pid}/fd")]
