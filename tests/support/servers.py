"""Local servers a test starts: a free port to listen on, a throw-away redis-server."""

import shutil
import socket
import subprocess
import time

import pytest
import redis


def free_port():
    """A port nothing listens on (the system picked it, then it was let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
