"""The embedded job engine on plans of the tests' own: states, the bound of the store and its time to live, a crash,
closing; and how a ``Prefer`` header is read."""

import threading
import time

import pytest
import structlog
from structlog.testing import capture_logs

from lms_api import jobs
from lms_api.errors import ApiError, ErrorCode
from lms_api.jobs import EmbeddedEngine, JobKind, JobState, preferences
from lms_api.metrics import GatewayMetrics
from lms_api.services.progress import advanced, stopped


class Plan:
    """Writes ``total`` items, one a call, each call waiting for ``gate`` when given."""

    def __init__(self, total=2, gate=None, failure=None):
        self.total = total
        self.gate = gate
        self.failure = failure
        self.calls = 0

    def apply(self, progress=None):
        for done in range(1, self.total + 1):
            if self.gate is not None:
                self.gate.wait(5)
            if self.failure is not None:
                raise self.failure
            self.calls += 1
            if done < self.total and not advanced(progress, done, self.total):
                raise stopped("stopped", applied_any=True, applied=list(range(done)))
        return {"written": self.total}


def finished(engine, job_id, seconds=5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = engine.get(job_id)
        if job.state not in (JobState.QUEUED, JobState.RUNNING):
            return job
        time.sleep(0.005)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def engine():
    engine = EmbeddedEngine(1, 3600, GatewayMetrics(), max_jobs=3)
    yield engine
    engine.close()


@pytest.mark.parametrize(
    ("header", "asks"),
    [
        ("respond-async", True),
        ("RESPOND-ASYNC", True),
        ("  respond-async  ", True),
        ("wait=10, respond-async", True),
        ("return=minimal; foo=bar, Respond-Async; x", True),
        ('handling=lenient, respond-async; note="a, b"', True),
        ("respond-async, wait=5", True),
        ("", False),
        ("wait=10", False),
        ("respond-async-later", False),
        ("respond_async", False),
        ('note="respond-async"', False),
        ('note="a, respond-async"', False),
        ("respond async", False),  # not a token
        ("x=respond-async", False),
    ],
)
def test_prefer_is_read_as_rfc_7240_preferences(header, asks):
    assert ("respond-async" in preferences(header)) is asks


def test_a_job_runs_on_a_thread_of_its_own_to_its_result(engine):
    threads = []
    plan = Plan()
    plan.apply = (
        lambda apply: lambda progress=None: threads.append(threading.current_thread().name) or apply(progress)
    )(plan.apply)

    queued = engine.submit(JobKind.ENROL, "a", "r1", plan, lambda answer: {**answer, "dumped": True})

    assert queued.state is JobState.QUEUED
    job = finished(engine, queued.id)
    assert (job.state, job.result, job.done) == (JobState.SUCCEEDED, {"written": 2, "dumped": True}, 2)
    assert threads[0].startswith("lms-api-job")


def test_an_unexpected_exception_ends_the_job_failed_as_internalerror_and_is_logged(engine, monkeypatch):
    with capture_logs() as logs:
        # A logger made inside the capture: the module's own may be bound already to whatever configuration came first.
        monkeypatch.setattr(jobs, "log", structlog.get_logger("lms_api.jobs"))
        job = finished(
            engine, engine.submit(JobKind.ENROL, "a", "r1", Plan(failure=RuntimeError("a detail of the bug")), dict).id
        )

    assert job.state is JobState.FAILED
    assert (job.error["code"], job.error["request_id"]) == ("internalerror", "r1")
    assert "detail" not in job.error["message"]
    assert any(line["event"] == "job.crashed" and line["log_level"] == "error" for line in logs)


def test_an_api_error_ends_the_job_failed_or_partial_as_its_outcome_says(engine):
    refused = ApiError(ErrorCode.MOODLE_EXCEPTION, "no", {"applied": []})
    partly = ApiError(ErrorCode.MOODLE_EXCEPTION, "no", {"applied": [0], "outcome": "partial"})

    states = [
        finished(engine, engine.submit(JobKind.ENROL, "a", "r", Plan(failure=e), dict).id) for e in (refused, partly)
    ]

    assert [job.state for job in states] == [JobState.FAILED, JobState.PARTIAL]
    assert states[1].error["details"] == {"applied": [0], "outcome": "partial"}


def test_the_store_is_bounded_finished_jobs_out_first(engine):
    gate = threading.Event()
    done = engine.submit(JobKind.ENROL, "a", "r", Plan(), dict)
    finished(engine, done.id)
    running = [engine.submit(JobKind.ENROL, "a", "r", Plan(gate=gate), dict) for _ in range(2)]

    third = engine.submit(JobKind.ENROL, "a", "r", Plan(gate=gate), dict)  # the finished one makes room
    with pytest.raises(ApiError) as full:
        engine.submit(JobKind.ENROL, "a", "r", Plan(gate=gate), dict)

    assert engine.get(done.id) is None
    assert full.value.code is ErrorCode.JOBS_FULL and full.value.status == 503
    assert [job.id for job in engine.jobs_of("a")] == [third.id, running[1].id, running[0].id]
    gate.set()


def test_a_finished_job_is_kept_ttl_seconds():
    engine = EmbeddedEngine(1, 0.05)
    job = finished(engine, engine.submit(JobKind.ENROL, "a", "r", Plan(), dict).id)
    time.sleep(0.1)

    assert engine.get(job.id) is None
    engine.close()


def test_closing_cancels_the_queued_and_stops_the_running_between_calls():
    engine = EmbeddedEngine(1, 3600)
    gate = threading.Event()
    running_plan, queued_plan = Plan(total=3, gate=gate), Plan(gate=gate)
    running = engine.submit(JobKind.ENROL, "a", "r", running_plan, dict)
    queued = engine.submit(JobKind.ENROL, "a", "r", queued_plan, dict)
    while engine.get(running.id).state is JobState.QUEUED:
        time.sleep(0.005)
    threading.Timer(0.05, gate.set).start()

    engine.close()

    assert engine.get(queued.id).state is JobState.CANCELLED and queued_plan.calls == 0
    stopped_job = engine.get(running.id)
    assert (stopped_job.state, running_plan.calls) == (JobState.CANCELLED, 1)
    assert stopped_job.error["details"] == {"applied": [0], "outcome": "partial"}
