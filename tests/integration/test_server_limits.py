"""``pserve production.ini`` as it runs in production: past descriptor 1023 (poll, not select), with a soft limit on
open files that start-up raises to the hard one, which must fit the connection limit (and Redis's), forwarded
headers left to lms_api.caller, no Server header, a body cap of the largest body any route takes, and log events
when it is stopped."""

import contextlib
import http.client
import json
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests

from lms_api.server import REDIS_CLIENTS
from tests.support.credentials import mint
from tests.support.paths import ROOT
from tests.support.processes import (
    BIN,
    clean_env,
    open_descriptors,
    queue_remote_fault,
    wait_for_port,
)
from tests.support.servers import free_port
from tests.support.timing import eventually

SECRET = "limits-secret-" + "l" * 40
MOODLE_TOKEN = "limits-token"
USERS_BY_FIELD = "core_user_get_users_by_field"
CONNECTION_LIMIT = 1000  # production.ini
THREADS = 48  # production.ini
IDLE_CONNECTIONS = 1100  # past production.ini's connection limit, and past descriptor 1023 in the gateway


def production_env(moodle, **extra):
    return clean_env(MOODLE_BASE_URL=moodle, MOODLE_TOKEN=MOODLE_TOKEN, JWT_SECRET=SECRET, **extra)


@contextlib.contextmanager
def soft_open_files_limit(soft, hard_at_least):
    """This process's soft limit on open files (and that of the processes it starts meanwhile) set to ``soft``."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[1] != resource.RLIM_INFINITY and before[1] < hard_at_least:
        pytest.fail(f"the hard limit on open files is {before[1]}; this test needs {hard_at_least} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def json_events(log_file, event):
    return [record for record in map(json.loads, log_file.read_text().splitlines()) if record["event"] == event]


def start_gateway(spawn, tmp_path, moodle, ini="production.ini", **extra):
    """``pserve production.ini`` (or ``ini``, a variant in the test's folder) on a free port, its lines in
    gateway.log; answers (process, base URL, log file)."""
    port = free_port()
    gateway = spawn("pserve", ini, f"http_port={port}", env=production_env(moodle, **extra), log="gateway.log")
    wait_for_port(port, gateway)
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200, "the site info read", 20)
    return gateway, base, tmp_path / "gateway.log"


def queue_delays(moodle, function, *seconds):
    for delay in seconds:
        queue_remote_fault(moodle, MOODLE_TOKEN, kind="delay", seconds=delay, function=function)


def moodle_calls_in_flight(moodle):
    response = requests.get(f"{moodle}/__sandbox__/in-flight", headers={"X-Sandbox-Token": MOODLE_TOKEN}, timeout=5)
    return response.json()["in_flight"]


def test_a_low_soft_limit_on_open_files_is_raised_at_start_to_fit_the_connection_limit(
    spawn, standalone_sandbox, tmp_path
):
    needed = CONNECTION_LIMIT + THREADS + 64
    with soft_open_files_limit(1024, hard_at_least=needed):  # a common default, below what production.ini needs
        gateway, _, log_file = start_gateway(spawn, tmp_path, standalone_sandbox(MOODLE_TOKEN))

    soft, hard = resource.prlimit(gateway.pid, resource.RLIMIT_NOFILE)
    assert soft >= needed
    assert soft == hard or hard == resource.RLIM_INFINITY
    gateway.terminate()
    gateway.wait(15)
    (raised,) = json_events(log_file, "server.open_files_raised")
    assert (raised["soft_before"], raised["soft"], raised["needed"]) == (1024, soft, needed)


def test_a_hard_limit_on_open_files_below_the_connection_limit_stops_the_start_with_one_line(tmp_path):
    shutil.copy(ROOT / "production.ini", tmp_path)

    def low_limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))

    result = subprocess.run(
        [str(BIN / "pserve"), "production.ini", f"http_port={free_port()}"],
        cwd=tmp_path,
        env=production_env("http://127.0.0.1:9"),
        preexec_fn=low_limits,  # the child's limits only
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"lms_api: connection_limit and threads need {CONNECTION_LIMIT + THREADS + 64} open files, but the hard limit "
        "is 1024 (ulimit -Hn): raise it, or lower connection_limit"
    )


def test_with_redis_a_hard_limit_that_fits_the_connections_but_not_each_threads_redis_connections_stops_the_start(
    tmp_path,
):
    shutil.copy(ROOT / "production.ini", tmp_path)
    without_redis = CONNECTION_LIMIT + THREADS + 64
    with_redis = CONNECTION_LIMIT + THREADS * (1 + REDIS_CLIENTS) + 64
    hard = (without_redis + with_redis) // 2

    def low_limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    result = subprocess.run(
        [str(BIN / "pserve"), "production.ini", f"http_port={free_port()}"],
        cwd=tmp_path,
        env=production_env("http://127.0.0.1:9", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
        preexec_fn=low_limits,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    # Said once the settings tell of Redis: the app is built by then, and its log holds stderr. The site info's
    # refresher, started with the app, may log its own line about Redis before the process ends.
    lines = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    refused = (
        f"lms_api: connection_limit, threads and their Redis connections (REDIS_URL) need {with_redis} open files, "
        f"but the hard limit is {hard} (ulimit -Hn): raise it, or lower connection_limit"
    )
    assert lines.count(refused) == 1
    others = {line for line in lines if line != refused and not line.startswith("Starting server in PID")}
    assert others <= {"cache.redis_unavailable"}, lines


def test_past_descriptor_1023_and_past_its_connection_limit_the_gateway_keeps_serving(
    spawn, standalone_sandbox, tmp_path
):
    """1,100 idle connections and a keep-alive connection to Moodle per busy thread: more than 1,023 descriptors in
    the gateway, which select() cannot watch. At its connection limit waitress stops accepting; it must neither stop
    nor spin, and once callers leave it serves again."""
    moodle = standalone_sandbox(MOODLE_TOKEN)
    # This test's own 1,100 sockets; the gateway starts with the same limit, enough for production.ini.
    with soft_open_files_limit(2048, hard_at_least=2048):
        gateway, base, log_file = start_gateway(
            spawn, tmp_path, moodle, MOODLE_MAX_CONCURRENCY="64", CACHE_TTLS="users=0"
        )
        busy = 40  # threads that each keep a connection to Moodle once their call is answered
        queue_delays(moodle, USERS_BY_FIELD, *[1.0] * busy)
        token = mint("users:read", secret=SECRET, sub="limits")
        with ThreadPoolExecutor(busy) as callers:
            statuses = list(
                callers.map(
                    lambda _: (
                        requests.get(
                            f"{base}/api/moodle/users/by-field?field=id&values=3",
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=30,
                        ).status_code
                    ),
                    range(busy),
                )
            )
        assert statuses == [200] * busy
        idle = []
        try:
            for _ in range(IDLE_CONNECTIONS):
                idle.append(socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10))

            def at_the_limit():
                assert gateway.poll() is None, f"the gateway stopped: {log_file.read_text()[-2000:]}"
                return "reached the connection limit" in log_file.read_text()

            eventually(at_the_limit, "waitress stopping at its connection limit", seconds=30)
            assert max(open_descriptors(gateway)) > 1023
            time.sleep(1)  # a few turns of the serve loop at the limit
            assert gateway.poll() is None
            assert log_file.read_text().count("server accept() threw an exception") == 0

            for connection in idle[:200]:
                connection.close()
            healthz = requests.get(f"{base}/healthz", timeout=30)

            assert healthz.status_code == 200
            assert gateway.poll() is None
        finally:
            for connection in idle:
                connection.close()


def test_sigterm_logs_shutting_down_and_stopped_with_the_requests_in_flight(spawn, standalone_sandbox, tmp_path):
    moodle = standalone_sandbox(MOODLE_TOKEN)
    # production.ini with two threads, which the two calls below both hold once both are at Moodle: no other thread
    # is left to be counted in flight. With more, the thread that answered /readyz may still be counted, as waitress
    # counts a thread active from the end of its request until it takes its lock again.
    production = (ROOT / "production.ini").read_text()
    assert production.count("\nthreads = 48\n") == 1
    (tmp_path / "two-threads.ini").write_text(production.replace("\nthreads = 48\n", "\nthreads = 2\n"))
    # Two threads are too few for event streams the gateway would serve itself: nginx (never reached here) holds them.
    nchan = f"http://127.0.0.1:{free_port()}/lms_api/publish"
    gateway, base, log_file = start_gateway(
        spawn, tmp_path, moodle, ini="two-threads.ini", CACHE_TTLS="users=0", NCHAN_PUBLISH_URL=nchan
    )
    # One call that ends within waitress's 5 s of grace, one that does not.
    queue_delays(moodle, USERS_BY_FIELD, 3.0, 30.0)
    token = mint("users:read", secret=SECRET, sub="stopping")
    answers = {}

    def call(name, user):
        try:
            answers[name] = requests.get(
                f"{base}/api/moodle/users/by-field?field=id&values={user}",
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": name},
                timeout=30,
            ).status_code
        except requests.ConnectionError:
            answers[name] = "cut"

    callers = []
    for number, name in enumerate(("quick", "slow"), start=1):
        callers.append(threading.Thread(target=call, args=(name, 2 + number)))
        callers[-1].start()
        eventually(lambda number=number: moodle_calls_in_flight(moodle) == number, f"{name} call at Moodle")

    gateway.send_signal(signal.SIGTERM)
    gateway.wait(20)
    for caller in callers:
        caller.join(10)

    assert answers == {"quick": 200, "slow": "cut"}
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    told = [
        (event["event"], event.get("in_flight"), event.get("request_id"))
        for event in events
        if event["event"] in {"server.shutting_down", "request", "server.stopped"} and event.get("path") != "/readyz"
    ]
    assert told == [
        ("server.shutting_down", 2, None),  # both calls at Moodle, and nothing else
        ("request", None, "quick"),  # answered within the grace
        ("server.stopped", 1, None),  # the slow one still running, ended with the process
    ]
    assert [event["logger"] for event in events if event["event"].startswith("server.")] == ["lms_api.server"] * 2


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_each_log_both_events(spawn, standalone_sandbox, tmp_path, stop):
    gateway, _, log_file = start_gateway(spawn, tmp_path, standalone_sandbox(MOODLE_TOKEN))

    gateway.send_signal(stop)

    assert gateway.wait(20) == 0
    (shutting_down,) = json_events(log_file, "server.shutting_down")
    (stopped,) = json_events(log_file, "server.stopped")
    # The thread that answered /readyz may still be finishing up after its answer went out.
    assert shutting_down["in_flight"] in {0, 1}
    assert stopped["in_flight"] == 0
    assert shutting_down["timestamp"] <= stopped["timestamp"]


def test_forwarded_headers_reach_the_gateway_which_believes_them_from_trusted_proxies_only(
    spawn, standalone_sandbox, tmp_path
):
    _, base, _ = start_gateway(
        spawn,
        tmp_path,
        standalone_sandbox(MOODLE_TOKEN),
        TRUSTED_PROXIES="127.0.0.1/32",
        METRICS_ALLOWED_NETWORKS="192.0.2.7/32",
    )

    def metrics(**headers):
        return requests.get(f"{base}/metrics", headers=headers, timeout=10).status_code

    assert metrics(**{"X-Forwarded-For": "192.0.2.7"}) == 200  # forwarded by a trusted proxy, 127.0.0.1
    assert metrics(**{"X-Forwarded-For": "192.0.2.7, 192.0.2.8"}) == 404  # the nearest hop decides
    assert metrics() == 404  # 127.0.0.1 itself is not allowed


def test_no_answer_names_waitress_and_its_body_cap_is_the_largest_body_a_route_takes(
    spawn, standalone_sandbox, tmp_path
):
    _, base, _ = start_gateway(
        spawn, tmp_path, standalone_sandbox(MOODLE_TOKEN), MOODLE_MAX_UPLOAD_MB="1", MAX_JSON_BODY_KB="4096"
    )
    json_body = b'{"fullname": "' + b"x" * (2 * 1024 * 1024) + b'"}'  # over the upload's 1 MiB, within 4 MiB

    answers = {
        "healthz": requests.get(f"{base}/healthz", timeout=10),
        "not found": requests.get(f"{base}/nowhere", timeout=10),
        "json body": requests.post(
            f"{base}/api/moodle/courses", data=json_body, headers={"Content-Type": "application/json"}, timeout=10
        ),
        "over every limit": declared_body(base, "/api/moodle/courses", 4 * 1024 * 1024 + 1),
    }

    assert answers["json body"].status_code == 401, answers["json body"].text  # reached the gateway's checks
    assert answers["json body"].json()["error"]["code"] == "unauthenticated"
    assert answers["over every limit"].status_code == 413  # waitress's own refusal, unread
    assert {name: answer.headers.get("Server") for name, answer in answers.items()} == dict.fromkeys(answers)
    assert "waitress" not in answers["over every limit"].text


def declared_body(base, path, length):
    """A POST that declares ``length`` bytes and sends none: refused on its Content-Length alone."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        answer = connection.getresponse()
        return SimpleNamespace(status_code=answer.status, headers=answer.headers, text=answer.read().decode())
    finally:
        connection.close()
