"""The embedded job engine on plans of the tests' own: states, the bound of the store and its time to live, a crash,
closing; and how a ``Prefer`` header is read."""

import threading
import time

import pytest
import structlog
from structlog.testing import capture_logs

from lms_api import audit, jobs
from lms_api.errors import ApiError, ErrorCode
from lms_api.events import caller_channel
from lms_api.jobs import EmbeddedEngine, JobKind, JobState, preferences
from lms_api.metrics import GatewayMetrics
from lms_api.services.progress import advanced, stopped
from tests.support.events import RecordingEvents


class Plan:
    """Writes ``total`` items, one a call, each call waiting for ``gate`` when given."""

    def __init__(self, total=2, gate=None, failure=None):
        self.total = total
        self.gate = gate
        self.failure = failure
        self.calls = 0
        self.applying = threading.Event()

    def apply(self, progress=None):
        self.applying.set()
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


@pytest.mark.parametrize(
    ("details", "state"),
    [
        ({"applied": [0, 1], "unknown": [2], "not_applied": [3], "outcome": "unknown"}, JobState.PARTIAL),
        ({"applied": [], "unknown": [0, 1], "outcome": "unknown"}, JobState.FAILED),
        ({"created": [{"index": 0, "id": 7, "username": "a"}], "unknown": [1], "outcome": "unknown"}, JobState.PARTIAL),
        ({"created": [], "not_created": [0, 1]}, JobState.FAILED),
        ({"updated": [3], "failed": [{"id": 4, "code": "emailtaken", "message": "m"}]}, JobState.PARTIAL),
        ({"updated": [], "failed": [{"id": 4, "code": "emailtaken", "message": "m"}]}, JobState.FAILED),
        ({"updated": [3], "unknown": [4], "not_attempted": [5], "outcome": "unknown"}, JobState.PARTIAL),
    ],
)
def test_a_failure_after_items_were_applied_ends_the_job_partial_whatever_the_failed_calls_outcome(
    engine, details, state
):
    failure = ApiError(ErrorCode.BAD_RESPONSE, "no", details)

    job = finished(engine, engine.submit(JobKind.USERS_UPDATE, "a", "r", Plan(failure=failure), dict).id)

    assert job.state is state
    assert job.error["details"] == details


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


def test_closing_cancels_the_queued_jobs_before_any_can_start(monkeypatch):
    engine = EmbeddedEngine(1, 3600)
    gate = threading.Event()
    running_plan, queued_plan = Plan(total=1, gate=gate), Plan(total=1)
    running = engine.submit(JobKind.ENROL, "a", "r", running_plan, dict)
    queued = engine.submit(JobKind.ENROL, "a", "r", queued_plan, dict)
    assert running_plan.applying.wait(5)  # past the engine's last look at a cancel before its first call

    class FreeingTheThread:
        """As the engine says it is stopping, the running job ends: its thread is free for any job still queued."""

        def info(self, event, **fields):
            if event == "jobs.stopping":
                gate.set()
                deadline = time.monotonic() + 0.5
                while queued_plan.calls == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)

    monkeypatch.setattr(jobs, "log", FreeingTheThread())

    engine.close()

    assert (engine.get(queued.id).state, engine.get(queued.id).started, queued_plan.calls) == (
        JobState.CANCELLED, None, 0)  # fmt: skip
    assert engine.get(running.id).state is JobState.SUCCEEDED


def test_a_job_cancelled_as_it_starts_makes_no_moodle_call(engine, monkeypatch):
    class CancellingAtStart:
        """Cancels the job as its thread says it started, before its first call."""

        def info(self, event, **fields):
            if event == "job.started":
                engine.cancel(structlog.contextvars.get_contextvars()["job_id"])

    monkeypatch.setattr(jobs, "log", CancellingAtStart())
    plan = Plan()

    job = finished(engine, engine.submit(JobKind.ENROL, "a", "r", plan, dict).id)

    assert (job.state, job.error["code"], plan.calls) == (JobState.CANCELLED, "jobcancelled", 0)
    assert "nothing was written" in job.error["message"]


def test_a_job_submitted_once_the_engine_is_closing_is_refused_and_not_kept():
    engine = EmbeddedEngine(1, 3600)
    engine.close()

    with pytest.raises(ApiError) as refused:
        engine.submit(JobKind.ENROL, "a", "r", Plan(), dict)

    assert (refused.value.code, refused.value.status) == (ErrorCode.JOBS_STOPPING, 503)
    assert engine.jobs_of("a") == [] and engine.queued() == 0


def test_a_job_the_pool_refuses_as_the_interpreter_exits_is_refused_and_not_kept(engine, monkeypatch):
    def exiting(*args):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(engine._pool, "submit", exiting)

    with pytest.raises(ApiError) as refused:
        engine.submit(JobKind.ENROL, "a", "r", Plan(), dict)

    assert refused.value.code is ErrorCode.JOBS_STOPPING
    assert engine.jobs_of("a") == []


def test_each_job_is_audited_once_when_it_ends_cancelled_before_it_started_too(monkeypatch):
    engine = EmbeddedEngine(1, 3600)
    gate = threading.Event()
    with capture_logs() as logs:
        monkeypatch.setattr(audit, "log", structlog.get_logger("lms_api.audit"))
        ran = engine.submit(JobKind.USERS_CREATE, "ada", "r1", Plan(gate=gate), dict)
        failed = engine.submit(JobKind.ENROL, "bob", "r2", Plan(failure=ApiError(ErrorCode.BAD_RESPONSE, "x")), dict)
        waiting = engine.submit(JobKind.ENROL, "ada", "r3", Plan(), dict)
        engine.cancel(waiting.id)
        gate.set()
        finished(engine, ran.id), finished(engine, failed.id)
        engine.close()

    events = {event["job_id"]: event for event in logs if event["event"] == "audit"}
    assert len([event for event in logs if event["event"] == "audit"]) == 3
    common = ("sub", "kind", "request_id", "items", "state", "outcome")
    assert [tuple(events[job.id][name] for name in common) for job in (ran, failed, waiting)] == [
        ("ada", "users.create", "r1", 2, "succeeded", "ok"),
        ("bob", "enrol", "r2", 2, "failed", "badresponse"),
        ("ada", "enrol", "r3", 2, "cancelled", "jobcancelled"),
    ]
    assert events[waiting.id]["moodle_functions"] == []


def test_a_listed_job_is_a_summary_without_result_nor_error_details(engine):
    failure = ApiError(ErrorCode.BAD_RESPONSE, "no", {"applied": list(range(1000))})
    ok = finished(engine, engine.submit(JobKind.ENROL, "a", "r", Plan(), dict).id)
    failed = finished(engine, engine.submit(JobKind.ENROL, "a", "r", Plan(failure=failure), dict).id)

    assert "result" in ok.resource() and "result" not in ok.summary()
    assert {name: value for name, value in ok.resource().items() if name != "result"} == ok.summary()
    assert failed.summary()["error"] == {"code": "badresponse", "message": "no", "request_id": "r"}
    assert failed.resource()["error"]["details"] == {"applied": list(range(1000))}


def test_a_jobs_progress_is_published_to_its_callers_channel():
    events = RecordingEvents()
    engine = EmbeddedEngine(1, 3600, events=events)
    job = finished(engine, engine.submit(JobKind.ENROL, "caller-sub", "r", Plan(total=3), dict).id)
    engine.close()

    progress = events.of_type("job.progress")
    assert {channel for channel, _ in progress} == {caller_channel("caller-sub")}
    shown = [(data["job"]["state"], data["job"]["progress"]["done"]) for _, data in progress]
    assert shown == [("running", 0), ("running", 1), ("running", 2), ("succeeded", 3)]
    assert progress[-1][1]["job"]["id"] == job.id and "result" not in progress[-1][1]["job"]


def test_a_job_cancelled_while_queued_is_published_too():
    events = RecordingEvents()
    engine = EmbeddedEngine(1, 3600, events=events)
    gate = threading.Event()
    engine.submit(JobKind.ENROL, "a", "r", Plan(total=1, gate=gate), dict)
    queued = engine.submit(JobKind.ENROL, "b", "r", Plan(total=1), dict)

    engine.cancel(queued.id)
    gate.set()
    engine.close()

    cancelled = [data["job"] for channel, data in events.of_type("job.progress") if channel == caller_channel("b")]
    assert [(job["id"], job["state"]) for job in cancelled] == [(queued.id, "cancelled")]
