"""Local servers a test starts: a free port to listen on, a throw-away redis-server."""

import itertools
import os
import random
import shutil
import socket
import subprocess
import time

import pytest
import redis

# Each test worker takes its ports from a block of its own, below the system's ephemeral range (Linux: 32768-60999). A
# port the system picked and let go could be taken, before the process meant to listen on it started, by another
# worker's test or as the local port of any outgoing connection; the ports of a block are no one else's.
PORTS_FIRST = 10000
PORTS_PER_WORKER = 1000
WORKER_BLOCKS = 20
_ports_taken = itertools.count(random.randrange(PORTS_PER_WORKER))


def free_port():
    """A port nothing listens on, from this test worker's own block."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = PORTS_FIRST + (int(worker) % WORKER_BLOCKS if worker.isdigit() else 0) * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = first + next(_ports_taken) % PORTS_PER_WORKER
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # listened on, or still closing
                continue
            return port
    raise AssertionError(f"no free port left in {first}-{first + PORTS_PER_WORKER - 1}")


def start_redis_server(port=None):
    """A throw-away ``redis-server`` on ``port`` (default: a free one), no persistence; returns (process, url)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: the rate-limit tests need a real Redis (apt install redis-server)")
    if port is None:
        port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return process, url
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start")
