"""Threads that serve no request read the cache without a request's snapshot of the generations, even on a runtime
whose threads start with a copy of their starter's context (a request's, when a request submits a job)."""

import contextvars
import threading

import pytest

from lms_api.health import SiteInfoRefresher
from lms_api.jobs import EmbeddedEngine, JobKind
from lms_api.redisstate import Snapshot, request_snapshot, taking_snapshot

REQUESTS_SNAPSHOT = Snapshot([("lms_api:cache:generation:courses", b"41")], {})


@pytest.fixture
def threads_inherit_context(monkeypatch):
    """Threads run in a copy of the context they were started from, as with Python's ``thread_inherit_context``."""
    start, run = threading.Thread.start, threading.Thread.run

    def start_with_context(thread):
        thread.started_in = contextvars.copy_context()
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_with_context)
    monkeypatch.setattr(threading.Thread, "run", lambda thread: thread.started_in.run(run, thread))


class Seen:
    """What a thread's work saw as its request's snapshot."""

    def __init__(self):
        self.snapshots = []
        self.done = threading.Event()

    def note(self):
        self.snapshots.append(request_snapshot())
        self.done.set()


def test_a_thread_started_in_a_request_inherits_its_snapshot_on_such_a_runtime(threads_inherit_context):
    seen = Seen()
    with taking_snapshot(REQUESTS_SNAPSHOT):
        thread = threading.Thread(target=seen.note)
        thread.start()
    thread.join(5)

    assert seen.snapshots == [REQUESTS_SNAPSHOT]  # what the threads below are kept from


def test_a_job_submitted_by_a_request_runs_without_its_snapshot(threads_inherit_context):
    seen = Seen()

    class Plan:
        total = 1

        def apply(self, progress=None):
            seen.note()
            return {}

    engine = EmbeddedEngine(1, 60)
    try:
        with taking_snapshot(REQUESTS_SNAPSHOT):
            engine.submit(JobKind.ENROL, "caller", "request", Plan(), dict)
        assert seen.done.wait(5)
    finally:
        engine.close()

    assert seen.snapshots == [None]


def test_the_site_info_refresher_started_in_a_request_reads_without_its_snapshot(threads_inherit_context):
    seen = Seen()

    class Cache:
        def fetch_and_store(self, function, params, fetch):
            seen.note()

    refresher = SiteInfoRefresher(client=None, cache=Cache(), interval_s=60)
    with taking_snapshot(REQUESTS_SNAPSHOT):
        refresher.start()
    try:
        assert seen.done.wait(5)
    finally:
        refresher.stop()

    assert seen.snapshots == [None]
