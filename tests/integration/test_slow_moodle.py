"""A slow and a failing Moodle behind ``pserve production.ini``, both as real processes.

The bulkhead keeps the calls Moodle sees at MOODLE_MAX_CONCURRENCY and refuses the excess quickly; probes and
cached reads answer meanwhile. The breaker stops calling a Moodle that keeps failing, says so on ``/readyz``, and
lets one trial call through after the cool-down. The bounds below are generous on purpose: they tell a refusal
(a fraction of a second) from a wait on Moodle (seconds); timing itself belongs to the benchmarks.
"""

import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.support.credentials import mint
from tests.support.paths import ROOT
from tests.support.processes import BIN, clean_env
from tests.support.servers import free_port

SECRET = "slow-moodle-secret-" + "s" * 40
MOODLE_TOKEN = "slow-moodle-token"
USERS_BY_FIELD = "core_user_get_users_by_field"

MAX_CONCURRENCY = 10  # MOODLE_MAX_CONCURRENCY's default: left unset below
SLOW_S = 2.0  # what every users-by-field call takes in Moodle during the scenario
# MOODLE_TIMEOUT_MS: the calls that got a slot are answered with room to spare on a loaded machine.
TIMEOUT_MS = 4000
CALLERS = 100
BREAKER_FAILURES = 3
COOLDOWN_S = 3  # the refused call and three probes must all be made while the breaker is still open
PROMPT_S = 1.0  # a probe, a cached read, a refusal: well under SLOW_S
MARGIN_S = 1.5  # past MOODLE_TIMEOUT_MS, for a loaded machine


@dataclass
class Stack:
    moodle: str
    gateway: str

    def control(self, method, action, **kwargs):
        response = requests.request(
            method,
            f"{self.moodle}/__sandbox__/{action}",
            headers={"X-Sandbox-Token": MOODLE_TOKEN},
            timeout=5,
            **kwargs,
        )
        assert response.ok, response.text
        return response.json()

    def calls(self, function):
        return self.control("GET", "calls")["calls"].get(function, 0)

    def get(self, path, token=None, timeout=10):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.monotonic()
        response = requests.get(f"{self.gateway}{path}", headers=headers, timeout=timeout)
        return response, time.monotonic() - started


def start(args, env, folder, name):
    """A process whose output goes to ``folder/name.log``: a pipe nobody reads would fill and stall a busy gateway."""
    with open(folder / f"{name}.log", "w") as log:
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=folder, env=env, stdout=log, stderr=log)


def wait_until(url, process, folder, name, status=200, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{(folder / f'{name}.log').read_text()}")
        try:
            if requests.get(url, timeout=5).status_code == status:
                return
        except requests.RequestException:
            pass  # not listening yet, or listening while the app is still being built
        time.sleep(0.02)
    raise AssertionError(f"{url} never answered {status}:\n{(folder / f'{name}.log').read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``lms-api sandbox`` and ``pserve production.ini`` in front of it, shared by this module's tests."""
    folder = tmp_path_factory.mktemp("slow-moodle")
    shutil.copy(ROOT / "production.ini", folder)  # an empty folder: a developer's own .env cannot leak in
    moodle_port, gateway_port = free_port(), free_port()
    moodle, gateway = f"http://127.0.0.1:{moodle_port}", f"http://127.0.0.1:{gateway_port}"
    processes = []
    try:
        args = ["lms-api", "sandbox", "--port", str(moodle_port), "--token", MOODLE_TOKEN]
        processes.append(start(args, clean_env(), folder, "sandbox"))
        wait_until(f"{moodle}/__sandbox__/calls", processes[0], folder, "sandbox", status=403)  # no token
        env = clean_env(
            MOODLE_BASE_URL=moodle,
            MOODLE_TOKEN=MOODLE_TOKEN,
            JWT_SECRET=SECRET,
            MOODLE_TIMEOUT_MS=str(TIMEOUT_MS),
            MOODLE_MAX_RETRIES="0",  # one transport failure per request, for the breaker's count
            MOODLE_BREAKER_FAILURES=str(BREAKER_FAILURES),
            MOODLE_BREAKER_COOLDOWN_S=str(COOLDOWN_S),
        )
        processes.append(start(["pserve", "production.ini", f"http_port={gateway_port}"], env, folder, "gateway"))
        wait_until(f"{gateway}/readyz", processes[1], folder, "gateway")  # the site info is known
        yield Stack(moodle, gateway)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(autouse=True)
def _no_faults_left(stack):
    stack.control("DELETE", "faults")
    yield
    stack.control("DELETE", "faults")


def users_path(value):
    return f"/api/moodle/users/by-field?field=id&values={value}"


def unique_ids(count):
    """User ids no other request of the run asked for, so every one is a cache miss of its own."""
    first = 1000 + uuid.uuid4().int % 10**9
    return range(first, first + count)


def test_a_slow_moodle_sees_at_most_max_concurrency_calls_and_the_rest_is_refused_quickly(stack):
    token = mint("siteinfo:read users:read", secret=SECRET, sub=f"slow-{uuid.uuid4().hex}")
    warm, _ = stack.get("/api/moodle/siteinfo", token)
    assert warm.status_code == 200, warm.text
    assert warm.headers["Cache-Status"].startswith("lms_api; hit"), "the served gateway read the site info at start"
    stack.control("POST", "faults", json={"kind": "delay", "seconds": SLOW_S, "function": USERS_BY_FIELD, "times": 999})
    stack.control("DELETE", "in-flight")
    sent_before = stack.calls(USERS_BY_FIELD)
    together = threading.Barrier(CALLERS, timeout=10)

    def ask(user_id):
        together.wait()
        return stack.get(users_path(user_id), token, timeout=TIMEOUT_MS / 1000 + 10)

    with ThreadPoolExecutor(CALLERS) as pool:
        answers = pool.map(ask, unique_ids(CALLERS))
        deadline = time.monotonic() + SLOW_S
        while stack.control("GET", "in-flight")["in_flight"] < MAX_CONCURRENCY:
            assert time.monotonic() < deadline, "Moodle never got MOODLE_MAX_CONCURRENCY calls at once"
            time.sleep(0.01)
        # Moodle is saturated now: what needs no Moodle call must still answer, and promptly.
        health, health_s = stack.get("/healthz")
        ready, ready_s = stack.get("/readyz")
        cached, cached_s = stack.get("/api/moodle/siteinfo", token)
        saturated_after_probes = stack.control("GET", "in-flight")["in_flight"]
        answers = list(answers)

    assert saturated_after_probes == MAX_CONCURRENCY, "the probes ran while Moodle was saturated"
    assert (health.status_code, ready.status_code, cached.status_code) == (200, 200, 200), ready.text
    assert ready.json()["data"]["moodle_calls_in_flight"] == MAX_CONCURRENCY
    assert cached.headers["Cache-Status"].startswith("lms_api; hit")
    assert max(health_s, ready_s, cached_s) < PROMPT_S, (health_s, ready_s, cached_s)

    assert stack.control("GET", "in-flight")["max_in_flight"] == MAX_CONCURRENCY
    assert stack.calls(USERS_BY_FIELD) - sent_before == MAX_CONCURRENCY  # the refused calls were never sent
    statuses = Counter(response.status_code for response, _ in answers)
    assert statuses == {200: MAX_CONCURRENCY, 503: CALLERS - MAX_CONCURRENCY}, statuses
    served = [seconds for response, seconds in answers if response.status_code == 200]
    refused = [(response, seconds) for response, seconds in answers if response.status_code == 503]
    assert max(seconds for _, seconds in answers) < TIMEOUT_MS / 1000 + MARGIN_S, "a caller waited past the deadline"
    assert min(served) >= SLOW_S, "the answered calls waited on the slow Moodle"
    assert {response.json()["error"]["code"] for response, _ in refused} == {"moodlebusy"}
    assert all(int(response.headers["Retry-After"]) >= 1 for response, _ in refused)
    slowest_refusal = max(seconds for _, seconds in refused)
    assert slowest_refusal < SLOW_S - 0.5, f"a refusal took {slowest_refusal:.2f} s: it waited on Moodle"


def test_the_breaker_stops_calls_to_a_failing_moodle_and_a_trial_call_closes_it(stack):
    token = mint("siteinfo:read users:read", secret=SECRET, sub=f"breaker-{uuid.uuid4().hex}")
    ids = iter(unique_ids(10))
    stack.control("POST", "faults", json={"kind": "reset", "function": USERS_BY_FIELD, "times": BREAKER_FAILURES})
    sent_before = stack.calls(USERS_BY_FIELD)

    for _ in range(BREAKER_FAILURES):
        failed, _ = stack.get(users_path(next(ids)), token)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "moodleunavailable"
        assert failed.json()["error"]["details"].get("breaker") != "open"
    opened_by = time.monotonic()  # the breaker opened before this: the cool-down ends before opened_by + COOLDOWN_S

    refused, refused_s = stack.get(users_path(next(ids)), token)
    health, _ = stack.get("/healthz")
    ready, _ = stack.get("/readyz")
    cached, _ = stack.get("/api/moodle/siteinfo", token)
    assert stack.calls(USERS_BY_FIELD) - sent_before == BREAKER_FAILURES, "the open breaker called Moodle"
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["details"]["breaker"]) == ("moodleunavailable", "open")
    assert 1 <= int(refused.headers["Retry-After"]) <= COOLDOWN_S
    assert refused_s < PROMPT_S
    assert health.status_code == 200
    assert ready.status_code == 503, ready.text
    assert (ready.json()["error"]["code"], ready.json()["error"]["details"]["breaker"]) == ("notready", "open")
    assert cached.status_code == 200, "a cached answer needs no Moodle call, breaker open or not"

    time.sleep(max(0.0, opened_by + COOLDOWN_S + 0.1 - time.monotonic()))
    trial, _ = stack.get(users_path(next(ids)), token)
    assert trial.status_code == 200, trial.text
    assert stack.calls(USERS_BY_FIELD) - sent_before == BREAKER_FAILURES + 1
    ready, _ = stack.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["data"]["breaker"] == "closed"
    after, _ = stack.get(users_path(next(ids)), token)
    assert after.status_code == 200, after.text


def open_the_breaker(stack, token, ids):
    stack.control("POST", "faults", json={"kind": "reset", "function": USERS_BY_FIELD, "times": BREAKER_FAILURES})
    for _ in range(BREAKER_FAILURES):
        assert stack.get(users_path(next(ids)), token)[0].status_code == 503
    ready, _ = stack.get("/readyz")
    assert ready.json()["error"]["details"]["breaker"] == "open"
    return time.monotonic()


def test_readyz_is_ready_again_after_the_cool_down_without_waiting_for_a_request(stack):
    token = mint("users:read", secret=SECRET, sub=f"cooldown-{uuid.uuid4().hex}")
    ids = iter(unique_ids(10))
    opened_by = open_the_breaker(stack, token, ids)
    time.sleep(max(0.0, opened_by + COOLDOWN_S + 0.1 - time.monotonic()))
    try:
        ready, _ = stack.get("/readyz")
        assert ready.status_code == 200, ready.text
    finally:
        assert stack.get(users_path(next(ids)), token)[0].status_code == 200  # the trial call closes it again
