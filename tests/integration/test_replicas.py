"""Two gateway processes behind one Redis enforce one rate-limit budget together."""

import uuid

import requests

from tests.conftest import free_port, mint
from tests.integration.conftest import clean_env, wait_for_port

SECRET = "replica-secret-" + "r" * 40


def test_two_gateway_processes_share_one_budget(spawn, standalone_sandbox, redis_url):
    env = clean_env(
        MOODLE_BASE_URL=standalone_sandbox("replica-token"),
        MOODLE_TOKEN="replica-token",
        JWT_SECRET=SECRET,
        REDIS_URL=redis_url,
        RATE_LIMIT_READ="5/minute",
    )
    ports = [free_port(), free_port()]
    for port in ports:
        wait_for_port(port, spawn("pserve", "production.ini", f"http_port={port}", env=env))
    token = mint("siteinfo:read", secret=SECRET, sub=f"replica-{uuid.uuid4().hex}")

    statuses = [
        requests.get(
            f"http://127.0.0.1:{ports[n % 2]}/api/moodle/siteinfo",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).status_code
        for n in range(8)
    ]

    assert statuses == [200] * 5 + [429] * 3
