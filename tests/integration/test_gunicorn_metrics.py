"""``/metrics`` under ``gunicorn --paste production.ini -k gthread -w 2 --threads 16``: whichever worker answers the
scrape, the counts are those of both, and of the workers gone before them; the master keeps the files they are summed
from in a private directory it removes at exit, or in the operator's PROMETHEUS_MULTIPROC_DIR, emptied at start."""

import os
import signal
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

import lms_api.gunicorn
from lms_api.gunicorn import child_exit, on_exit, post_fork, when_ready
from lms_api.metrics import MULTIPROCESS_DIRECTORY
from tests.integration import test_gunicorn
from tests.integration.test_gunicorn import (
    GUNICORN,
    MOODLE_TOKEN,
    SECRET,
    connection_to_each_worker,
    gateway_env,
    pid_of,
    start_gunicorn,
    worker_pids,
)
from tests.support.credentials import mint
from tests.support.processes import Processes, queue_remote_fault
from tests.support.timing import eventually

moodle = test_gunicorn.moodle  # its standalone sandbox fixture, one for this module too

# Requests without a token: counted under their route and 401, and sent by no other part of these tests.
UNAUTHENTICATED = ("lms_api_requests_total", (("method", "GET"), ("route", "api.moodle.siteinfo"), ("status", "401")))
OUTSIDE = {"X-Forwarded-For": "203.0.113.9"}  # a caller outside METRICS_ALLOWED_NETWORKS, through a trusted proxy
USERS_BY_FIELD = "core_user_get_users_by_field"
SLOW_S = 1.5  # a call Moodle takes this long holds each worker's one bulkhead slot


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, moodle, module_redis_url):
    """Two workers behind a trusted proxy on loopback, each with one bulkhead slot; the private directory of their
    metrics in the folder."""
    processes = Processes(tmp_path_factory.mktemp("gunicorn-metrics"))
    env = gateway_env(
        processes.folder,
        moodle,
        REDIS_URL=module_redis_url,
        TRUSTED_PROXIES="127.0.0.1",
        MOODLE_MAX_CONCURRENCY="1",
        TMPDIR=str(processes.folder),
    )
    try:
        yield start_gunicorn(processes, *GUNICORN, env=env)
    finally:
        processes.stop_all()


def scrape(session, base, gateway=None):
    """The samples of ``/metrics`` on ``session``'s connection; with ``gateway``, also the pid of the worker that
    answered."""
    request_id = f"scrape-{uuid.uuid4().hex}"
    response = session.get(f"{base}/metrics", headers={"X-Request-ID": request_id}, timeout=10)
    assert response.status_code == 200, response.text
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return (found, pid_of(gateway, request_id)) if gateway else found


def unauthenticated(session, base, times):
    for _ in range(times):
        assert session.get(f"{base}/api/moodle/siteinfo", timeout=10).status_code == 401


def test_requests_spread_over_both_workers_are_counted_once_each_whichever_worker_answers_the_scrape(gateway):
    sessions = connection_to_each_worker(gateway)
    first, second = sessions.values()
    before = scrape(first, gateway.base)
    durations = ("lms_api_request_duration_seconds_count", UNAUTHENTICATED[1][:2])

    unauthenticated(first, gateway.base, 4)
    unauthenticated(second, gateway.base, 6)

    for pid, session in sessions.items():
        found, answered_by = scrape(session, gateway.base, gateway)
        assert answered_by == pid
        assert found[UNAUTHENTICATED] == before.get(UNAUTHENTICATED, 0) + 10
        assert found[durations] == before.get(durations, 0) + 10
        assert ("lms_api_requests_created", UNAUTHENTICATED[1]) not in found  # counted in files, not in memory


def test_a_worker_killed_and_replaced_takes_none_of_the_counts_with_it_nor_is_counted_twice(gateway):
    sessions = connection_to_each_worker(gateway)
    (killed, doomed), (survivor, stays) = sessions.items()
    unauthenticated(doomed, gateway.base, 3)
    unauthenticated(stays, gateway.base, 2)
    counted = scrape(stays, gateway.base)[UNAUTHENTICATED]
    doomed.close()

    os.kill(killed, signal.SIGKILL)  # no last word: what it counted is what it had written
    eventually(lambda: replaced(gateway, killed, survivor), "the killed worker replaced, its app loaded", 30)
    sessions = connection_to_each_worker(gateway)
    (replacement,) = set(sessions) - {survivor}

    for session in sessions.values():
        assert scrape(session, gateway.base)[UNAUTHENTICATED] == counted
    unauthenticated(sessions[replacement], gateway.base, 5)
    assert scrape(sessions[survivor], gateway.base)[UNAUTHENTICATED] == counted + 5


def replaced(gateway, killed, survivor):
    """Whether the worker started in place of ``killed`` serves (its app loaded, it accepts): this time a probe
    reached it."""
    workers = worker_pids(gateway.process) - {survivor}
    if killed in workers or len(workers) != 1:
        return False
    with requests.Session() as session:
        probe = f"replaced-{uuid.uuid4().hex}"
        assert session.get(f"{gateway.base}/healthz", headers={"X-Request-ID": probe}, timeout=10).ok
        return {pid_of(gateway, probe)} == workers


def test_metrics_are_answered_to_the_operators_networks_alone_by_every_worker(gateway):
    for session in connection_to_each_worker(gateway).values():
        outside = session.get(f"{gateway.base}/metrics", headers=OUTSIDE, timeout=10)
        assert outside.status_code == 404
        assert "lms_api_requests_total" not in outside.text
        assert session.get(f"{gateway.base}/metrics", timeout=10).status_code == 200  # the proxy's own address


def test_the_workers_write_their_counts_to_the_masters_private_directory_and_the_scrape_tells_this_workers_state(
    gateway,
):
    sessions = connection_to_each_worker(gateway)
    (directory,) = gateway.log.parent.glob("lms_api-metrics-*")  # in the TMPDIR the fixture gave
    unauthenticated(next(iter(sessions.values())), gateway.base, 1)

    written = {path.name for path in directory.iterdir()}
    assert {f"counter_{pid}.db" for pid in sessions} <= written
    assert {f"histogram_{pid}.db" for pid in sessions} <= written
    for session in sessions.values():
        found = scrape(session, gateway.base)
        # Read from the answering worker itself: one sample each, not one per worker.
        assert found[("lms_api_moodle_concurrency_limit", ())] == 1
        assert found[("lms_api_moodle_calls_in_flight", ())] == 0
        assert found[("lms_api_moodle_breaker_state", ())] == 0
        assert found[("lms_api_moodle_bulkhead_refusals_total", ())] == 0  # summed from the files


def in_flight(moodle):
    response = requests.get(f"{moodle}/__sandbox__/in-flight", headers={"X-Sandbox-Token": MOODLE_TOKEN}, timeout=5)
    return response.json()["in_flight"]


def test_the_calls_each_workers_bulkhead_refused_are_summed(gateway, moodle):
    sessions, second_connections = connection_to_each_worker(gateway), connection_to_each_worker(gateway)
    headers = {"Authorization": "Bearer " + mint("users:read", secret=SECRET, sub=f"busy-{uuid.uuid4().hex}")}
    refusals = ("lms_api_moodle_bulkhead_refusals_total", ())
    busy = ("lms_api_moodle_calls_total", (("function", USERS_BY_FIELD), ("outcome", "moodlebusy")))
    before = scrape(next(iter(sessions.values())), gateway.base)
    queue_remote_fault(moodle, MOODLE_TOKEN, kind="delay", seconds=SLOW_S, function=USERS_BY_FIELD, times=2)
    user_ids = iter(range(first := 1000 + uuid.uuid4().int % 10**9, first + 4))  # none read before: each a call

    def users(session):
        path = f"/api/moodle/users/by-field?field=id&values={next(user_ids)}"
        return session.get(gateway.base + path, headers=headers, timeout=10)

    with ThreadPoolExecutor(1) as pool:
        for pid, session in sessions.items():
            slow = pool.submit(users, session)
            eventually(lambda: in_flight(moodle) == 1, "the slow call sent")
            refused = users(second_connections[pid])  # to the same worker, whose one slot is held
            assert (refused.status_code, refused.json()["error"]["code"]) == (503, "moodlebusy")
            assert slow.result().status_code == 200

    for session in sessions.values():
        found = scrape(session, gateway.base)
        assert found[refusals] == before[refusals] + 2
        assert found[busy] == before.get(busy, 0) + 2


def stop(running):
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(30) == 0


def test_the_masters_private_directory_goes_when_it_stops(tmp_path, moodle, module_redis_url):
    processes = Processes(tmp_path)
    env = gateway_env(
        tmp_path,
        moodle,
        REDIS_URL=module_redis_url,
        TMPDIR=str(tmp_path),
    )
    try:
        running = start_gunicorn(processes, *GUNICORN, env=env)
        (directory,) = tmp_path.glob("lms_api-metrics-*")
        assert f"lms_api: the workers' metrics are summed from {directory}" in running.log.read_text()
        assert oct(directory.stat().st_mode & 0o777) == oct(0o700)  # the master's user alone

        stop(running)

        assert not directory.exists()
    finally:
        processes.stop_all()


def stale_counts(directory, pid, count):
    """What a worker of a previous run left in ``directory``: ``count`` requests without a token."""
    stale = MmapedDict(str(directory / f"counter_{pid}.db"))
    labels = dict(UNAUTHENTICATED[1])
    key = mmap_key("lms_api_requests", "lms_api_requests_total", list(labels), list(labels.values()), "Requests")
    stale.write_value(key, count, 0.0)
    stale.close()


def test_the_operators_directory_is_emptied_of_a_previous_runs_counts_at_start_and_left_at_exit(
    tmp_path, moodle, module_redis_url
):
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale_counts(directory, 999_999, 1000)
    (directory / "README").write_text("the operator's")
    processes = Processes(tmp_path)
    env = gateway_env(
        tmp_path,
        moodle,
        REDIS_URL=module_redis_url,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        TMPDIR=str(tmp_path),
    )
    try:
        running = start_gunicorn(processes, *GUNICORN, env=env)
        session = requests.Session()
        unauthenticated(session, running.base, 2)

        assert scrape(session, running.base)[UNAUTHENTICATED] == 2
        assert not list(tmp_path.glob("lms_api-metrics-*"))  # no private one
        workers = worker_pids(running.process)
        stop(running)

        left = {path.name for path in directory.iterdir()}
        assert "counter_999999.db" not in left
        assert "README" in left
        assert {name.removeprefix("counter_").removesuffix(".db") for name in left if name.startswith("counter_")} <= {
            str(pid) for pid in workers
        }
    finally:
        processes.stop_all()


# The hooks in this process, on stand-ins for gunicorn's master and workers.


@pytest.fixture
def master(tmp_path, monkeypatch):
    """A master of ``workers`` workers, without PROMETHEUS_MULTIPROC_DIR, whose private directories are made in
    ``tmp_path``; the hooks' state and this process's environment are put back after the test."""
    # Set first, so that it is put back as it was (unset) once post_fork has set it: this process's apps keep their
    # metrics in memory.
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY, "")
    monkeypatch.delenv(MULTIPROCESS_DIRECTORY)
    monkeypatch.setattr(lms_api.gunicorn, "shared_metrics", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    logged = []

    def make(workers, pidfile=None):
        return SimpleNamespace(
            cfg=SimpleNamespace(workers=workers),
            pidfile=pidfile,
            log=SimpleNamespace(info=lambda text, *values: logged.append(text % values)),
            logged=logged,
        )

    return make


def test_one_worker_keeps_its_metrics_in_memory(master, tmp_path):
    arbiter = master(1)

    when_ready(arbiter)
    post_fork(arbiter, SimpleNamespace(pid=os.getpid()))

    assert MULTIPROCESS_DIRECTORY not in os.environ
    assert list(tmp_path.iterdir()) == []
    assert arbiter.logged == []
    child_exit(arbiter, SimpleNamespace(pid=123))
    on_exit(arbiter)


def test_the_master_of_two_workers_makes_a_directory_names_it_to_each_forgets_the_dead_and_removes_it(master, tmp_path):
    arbiter = master(2)

    when_ready(arbiter)
    (directory,) = tmp_path.iterdir()
    post_fork(arbiter, SimpleNamespace(pid=os.getpid()))
    assert os.environ[MULTIPROCESS_DIRECTORY] == str(directory)
    for name in ("gauge_livesum_321.db", "counter_321.db", "gauge_livesum_322.db"):
        (directory / name).write_bytes(b"")
    child_exit(arbiter, SimpleNamespace(pid=321))

    assert sorted(path.name for path in directory.iterdir()) == ["counter_321.db", "gauge_livesum_322.db"]
    assert arbiter.logged == [f"lms_api: the workers' metrics are summed from {directory}"]
    on_exit(arbiter)
    assert not directory.exists()


def test_the_operators_directory_is_made_if_missing_and_used_with_one_worker_too(master, tmp_path, monkeypatch):
    directory = tmp_path / "deep" / "metrics"
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY, str(directory))
    arbiter = master(1)

    when_ready(arbiter)
    (directory / "counter_1.db").write_bytes(b"")
    on_exit(arbiter)

    assert lms_api.gunicorn.shared_metrics == lms_api.gunicorn.SharedMetrics(str(directory), private=False)
    assert (directory / "counter_1.db").exists()  # the operator's: left as it is


def test_a_directory_of_the_operators_that_cannot_be_used_is_refused_in_one_line(master, tmp_path, monkeypatch, capsys):
    from gunicorn.pidfile import Pidfile

    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    monkeypatch.setenv(MULTIPROCESS_DIRECTORY, str(taken / "metrics"))
    pidfile = Pidfile(str(tmp_path / "gunicorn.pid"))
    pidfile.create(os.getpid())

    with pytest.raises(SystemExit) as refused:
        when_ready(master(2, pidfile))

    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"lms_api: PROMETHEUS_MULTIPROC_DIR={taken / 'metrics'} cannot hold the workers' metrics: Not a directory\n"
    )
    assert not (tmp_path / "gunicorn.pid").exists()
    assert lms_api.gunicorn.shared_metrics is None
