"""Hostile bodies through a real ``pserve``: waitress receives them as it would from anyone, and the process keeps
answering."""

import time

import pytest
import requests

from lms_api.settings import DEVELOPMENT_JWT_SECRET, MIB
from tests.support.credentials import mint
from tests.support.processes import clean_env, open_descriptors, wait_for_port
from tests.support.servers import free_port

BOUNDARY = "b0und4ry"


def token():
    """A token development.ini's gateway takes: it checks tokens with the development secret."""
    return mint("files:write", sub="hostile", secret=DEVELOPMENT_JWT_SECRET)


def many_files(count, size):
    parts = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="f' + str(number).encode() + b'.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * size + b"\r\n"
        for number in range(count)
    )
    return parts + b"--" + BOUNDARY.encode() + b"--\r\n"


@pytest.fixture
def gateway(spawn):
    port = free_port()
    process = spawn("pserve", "development.ini", f"http_port={port}", env=clean_env(), log="gateway.log")
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"


def test_1500_small_files_are_refused_at_once_and_the_process_keeps_answering(gateway):
    process, url = gateway
    body = many_files(1500, 1100)  # 1.7 MiB
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    descriptors_before = len(open_descriptors(process))

    answers = []
    for _ in range(2):
        with requests.Session() as connection:  # the second on a connection of its own
            started = time.perf_counter()
            response = connection.post(f"{url}/api/moodle/files/upload", data=body, headers=headers, timeout=30)
            answers.append((response.status_code, response.json()["error"]["code"], time.perf_counter() - started))

    assert [(status, code) for status, code, _ in answers] == [(400, "invalidmultipart")] * 2
    assert all(seconds < 5 for _, _, seconds in answers)  # generous for a loaded host; milliseconds of gateway work
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert process.poll() is None
    assert len(open_descriptors(process)) < descriptors_before + 20


def test_a_json_body_over_the_limit_is_a_413_with_the_api_headers_before_the_token(gateway):
    _, url = gateway
    body = b'{"fullname": "' + b"x" * MIB + b'"}'

    response = requests.post(
        f"{url}/api/moodle/courses", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "bodytoolarge"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "RateLimit-Limit" not in response.headers


def test_a_chunked_upload_with_a_latin1_charset_is_a_400_saying_so(gateway):
    _, url = gateway

    def chunks():
        yield many_files(1, 10)

    response = requests.post(
        f"{url}/api/moodle/files/upload",
        data=chunks(),  # no length: sent chunked
        headers={
            "Authorization": f"Bearer {token()}",
            "Content-Type": f"multipart/form-data; charset=latin1; boundary={BOUNDARY}",
        },
        timeout=30,
    )

    assert response.status_code == 400
    assert "charset=latin1" in response.json()["error"]["message"]
