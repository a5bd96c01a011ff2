"""Idempotency-Key across two real gateway processes sharing one real Redis: a write through one replica is replayed
by the other without a second call to Moodle, a key being answered by one is a 409 on the other, and a key whose
replica was killed mid-write is settled by the other once its lock has run out, not written again. And what only a
real server shows: the header given twice reaches the app joined into one value, and is refused."""

import http.client
import threading
import time
import uuid

import pytest
import requests

from tests.support.credentials import mint
from tests.support.processes import clean_env, queue_remote_fault, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually, join

SECRET = "idempotency-secret-" + "i" * 40
TOKEN = "idempotency-token"
CREATE = "core_course_create_courses"


def start_replicas(spawn, moodle, redis_url, **settings):
    """Two replicas on one sandbox and one Redis: their processes and base URLs."""
    env = clean_env(MOODLE_BASE_URL=moodle, MOODLE_TOKEN=TOKEN, JWT_SECRET=SECRET, REDIS_URL=redis_url, **settings)
    ports = [free_port(), free_port()]
    processes = [spawn("pserve", "production.ini", f"http_port={port}", env=env) for port in ports]
    for port, process in zip(ports, processes, strict=True):
        wait_for_port(port, process)
    return processes, [f"http://127.0.0.1:{port}" for port in ports]


@pytest.fixture
def replicas(spawn, standalone_sandbox, own_redis):
    moodle = standalone_sandbox(TOKEN)
    _, bases = start_replicas(spawn, moodle, own_redis[1])
    return moodle, bases


def sandbox(moodle, what):
    response = requests.get(f"{moodle}/__sandbox__/{what}", headers={"X-Sandbox-Token": TOKEN}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def creates(moodle):
    return sandbox(moodle, "calls")["calls"].get(CREATE, 0)


def create(base, body, idempotency_key):
    return requests.post(
        f"{base}/api/moodle/courses",
        json=body,
        headers={"Authorization": "Bearer " + mint("courses:write", secret=SECRET), "Idempotency-Key": idempotency_key},
        timeout=20,
    )


def new_course():
    shortname = f"REPLAY{uuid.uuid4().hex[:8]}"
    return {"fullname": f"Replayed {shortname}", "shortname": shortname, "categoryid": 1}


def test_a_write_through_one_replica_is_replayed_by_the_other_without_a_second_moodle_call(replicas):
    moodle, (a, b) = replicas
    body, idempotency_key = new_course(), uuid.uuid4().hex
    first = create(a, body, idempotency_key)
    sent = creates(moodle)
    replayed = create(b, body, idempotency_key)
    reused = create(b, {**body, "fullname": "Another"}, idempotency_key)

    assert first.status_code == 201, first.text
    assert (replayed.status_code, replayed.headers["Idempotent-Replayed"]) == (201, "true")
    assert replayed.content == first.content
    assert replayed.headers["Location"] == first.headers["Location"]
    assert replayed.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotencykeyreused")
    assert creates(moodle) == sent


def test_a_key_being_answered_by_one_replica_is_a_409_on_the_other(replicas):
    moodle, (a, b) = replicas
    body, idempotency_key = new_course(), uuid.uuid4().hex
    queue_remote_fault(moodle, TOKEN, kind="delay", seconds=2.0, function=CREATE)
    sandbox(moodle, "in-flight")  # the gateway's site info read, if any, is done
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("a", create(a, body, idempotency_key)))
    first.start()
    eventually(lambda: sandbox(moodle, "in-flight")["in_flight"] == 1, "the create in Moodle's hands")
    busy = create(b, body, idempotency_key)
    join([first])
    after = create(b, body, idempotency_key)

    assert (busy.status_code, busy.json()["error"]["code"], busy.headers["Retry-After"]) == (
        409,
        "idempotencyinprogress",
        "1",
    )
    assert answers["a"].status_code == 201, answers["a"].text
    assert (after.headers["Idempotent-Replayed"], after.content) == ("true", answers["a"].content)
    assert creates(moodle) == 1


def test_a_write_whose_replica_was_killed_is_settled_by_the_other_once_its_lock_ran_out(
    spawn, standalone_sandbox, own_redis
):
    moodle = standalone_sandbox(TOKEN)
    (killed, _), (a, b) = start_replicas(spawn, moodle, own_redis[1], IDEMPOTENCY_LOCK_S="1")
    body, idempotency_key = new_course(), uuid.uuid4().hex
    queue_remote_fault(moodle, TOKEN, kind="delay", seconds=1.0, function=CREATE)  # then applied, to no one
    sandbox(moodle, "in-flight")  # the gateway's site info read, if any, is done
    lost = {}
    first = threading.Thread(target=lambda: lost.setdefault("a", _attempt(create, a, body, idempotency_key)))
    first.start()
    eventually(lambda: sandbox(moodle, "in-flight")["in_flight"] == 1, "the create in Moodle's hands")
    lock_ends_by = time.monotonic() + 1  # the key was claimed before the create was sent
    killed.kill()
    join([first])
    eventually(lambda: sandbox(moodle, "in-flight")["in_flight"] == 0, "the create applied")
    time.sleep(max(0.0, lock_ends_by + 0.3 - time.monotonic()))
    settled = create(b, body, idempotency_key)
    replayed = create(b, body, idempotency_key)

    assert isinstance(lost["a"], requests.ConnectionError)
    assert settled.status_code == 201, settled.text
    assert "Idempotent-Replayed" not in settled.headers, "found in Moodle by its short name"
    assert (replayed.headers["Idempotent-Replayed"], replayed.content) == ("true", settled.content)
    assert creates(moodle) == 1, "not created twice"


def _attempt(send, *args):
    try:
        return send(*args)
    except requests.ConnectionError as error:
        return error


def test_the_key_given_twice_is_refused_by_a_served_gateway(replicas):
    moodle, (a, _) = replicas
    connection = http.client.HTTPConnection(a.removeprefix("http://"), timeout=10)
    body = b'{"fullname": "Twice", "shortname": "TWICE1", "categoryid": 1}'
    connection.putrequest("POST", "/api/moodle/courses")
    for name, value in [
        ("Authorization", "Bearer " + mint("courses:write", secret=SECRET)),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Idempotency-Key", "first"),
        ("Idempotency-Key", "second"),
    ]:
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    status, answer = response.status, response.read()
    connection.close()

    assert (status, answer.count(b'"invalididempotencykey"')) == (400, 1), answer
    assert creates(moodle) == 0
