"""Background jobs on RQ, the worker's side in this process: jobs queued by :class:`RQEngine` as the views queue them,
run by :func:`serve` (and ``lms-api worker --burst``) on a real Redis against the sandbox over HTTP; their records,
a cancel before or during a job, a job declared lost while its worker still runs, and the counts every replica reads.
"""

import json
import shutil
import signal
import threading
import time
import uuid

import pytest
import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from lms_api import cli, jobqueue
from lms_api.errors import ApiError, ErrorCode, error_body
from lms_api.events import caller_channel
from lms_api.jobqueue import RQEngine, WorkerContext, serve
from lms_api.jobs import JobKind, JobState
from lms_api.logging import configure_logging
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.functions import MoodleFunction
from lms_api.schemas.enrolments import EnrolResultSchema
from lms_api.schemas.users import UsersCreate, UsersCreatedSchema, UsersUpdatedSchema
from lms_api.security import Identity
from lms_api.services.enrolments import prepare_enrol
from lms_api.services.userwrites import prepare_create_users, prepare_update_users
from lms_api.settings import SETTING_NAMES
from moodle_sandbox.server import start_sandbox
from tests.functional.test_enrol import STUDENTS, enrolled, new_course
from tests.support.events import RecordingEvents
from tests.support.gateway import capture_logs, settings_for
from tests.support.paths import ROOT
from tests.support.sandbox import moodle_call, queue_fault
from tests.support.timing import eventually

TWO_ENROLMENTS_A_CALL = "9"  # 3 reserved fields + two enrolments of three; a user of five fields or more alone
ENROLLER = Identity("writer", frozenset({"enrol:write"}))
ADMIN = Identity("operator", frozenset({"admin"}))
USERS_WRITER = Identity("writer", frozenset({"users:write"}))
WRITES = (MoodleFunction.ENROL_USERS, MoodleFunction.CREATE_USERS, MoodleFunction.UPDATE_USERS)


class Watched:
    """The worker's Moodle: a real client on the sandbox, whose write calls the test counts and may act in (cancel
    the job, wait for it to be declared lost) just before each is sent."""

    def __init__(self, client):
        self._client = client
        self.writes = []
        self.before_write = None

    def __getattr__(self, name):
        return getattr(self._client, name)

    def call(self, function, params=None):
        if function in WRITES:
            self.writes.append(function)
            if self.before_write is not None:
                self.before_write(len(self.writes))
        return self._client.call(function, params)


@pytest.fixture(scope="module")
def site():
    server = start_sandbox(max_input_vars=int(TWO_ENROLMENTS_A_CALL))
    yield server
    server.stop()


@pytest.fixture
def make_settings(site, empty_redis):
    def make(**environ):
        return settings_for(
            site.url,
            site.site.token,
            MOODLE_MAX_INPUT_VARS=TWO_ENROLMENTS_A_CALL,
            JOBS_ENGINE="rq",
            REDIS_URL=empty_redis,
            **environ,
        )

    return make


@pytest.fixture
def settings(make_settings):
    return make_settings()


@pytest.fixture
def engine(settings):
    """A gateway's engine: what the views submit to, read and cancel through."""
    engine = RQEngine.from_settings(settings)
    yield engine
    engine.close()


@pytest.fixture
def replica(settings):
    """The engine of another gateway on the same Redis."""
    engine = RQEngine.from_settings(settings)
    yield engine
    engine.close()


def client_for(settings):
    return MoodleClient.from_settings(settings, settings.moodle_base_url, settings.moodle_token)


@pytest.fixture
def moodle(settings):
    return Watched(client_for(settings))


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """An RQ worker takes SIGINT and SIGTERM over to stop after its job; the test run gets them back."""
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in kept.items():
        signal.signal(number, handler)


@pytest.fixture
def work(settings, moodle, empty_redis):
    """``work()``: an ``lms-api worker --burst`` in this process: it runs the jobs queued, then returns."""
    clients = []

    def run(worker_settings=settings, worker_moodle=moodle):
        client = redis.Redis.from_url(empty_redis)
        clients.append(client)
        serve(WorkerContext(worker_settings, client, worker_moodle), burst=True)

    yield run
    for client in clients:
        client.close()


@pytest.fixture
def log_lines():
    """The log lines written from now on, as the worker renders them (``lms-api worker`` configures its logging)."""
    configure_logging("json", [])
    stream = capture_logs("json")

    def lines():
        parsed = []
        for line in stream.getvalue().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:  # a line of RQ's own
                continue
        return parsed

    return lines


def enrolments(course, users=STUDENTS, role="student"):
    return [{"roleid": role, "userid": user, "courseid": course} for user in users]


def submit_enrol(engine, moodle, settings, wanted, caller=ENROLLER, sub="writer"):
    """Queue an enrolment as the route does with ``Prefer: respond-async``: checked now, applied by a worker."""
    plan = prepare_enrol(moodle, wanted, settings, caller)
    return engine.submit(JobKind.ENROL, sub, uuid.uuid4().hex, plan, EnrolResultSchema().dump)


def new_users(count):
    stem = uuid.uuid4().hex[:8]
    wanted = [
        {"username": f"q{stem}{n}", "firstname": "Ada", "lastname": f"L{n}", "email": f"q{stem}{n}@example.org",
         "password": "Secret#123"}
        for n in range(count)
    ]  # fmt: skip
    return UsersCreate().load({"users": wanted})["users"]  # as the route hands them to the service


def on_site(site, usernames):
    found = moodle_call(site, "core_user_get_users_by_field", field="username", values=usernames)
    return {user["username"]: user["id"] for user in found}


def samples(engine):
    """The engine's shared metrics: {(sample name, labels as a tuple of pairs): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in engine.shared_metrics()
        for sample in family.samples
    }


# -- jobs run to their end ---------------------------------------------------------------------------------------


def test_an_enrolment_job_ends_with_the_synchronous_answer_and_its_progress_is_recorded_call_by_call(
    engine, replica, moodle, settings, site, work
):
    course, twin = new_course(site), new_course(site)
    gateway_moodle = client_for(settings)
    synchronous = EnrolResultSchema().dump(prepare_enrol(gateway_moodle, enrolments(twin), settings, ENROLLER).apply())
    queued = submit_enrol(engine, gateway_moodle, settings, enrolments(course))
    seen = []
    moodle.before_write = lambda _: seen.append(replica.get(queued.id))

    assert (queued.state, engine.queued()) == (JobState.QUEUED, 1)
    assert enrolled(site, course) == {}  # checked when queued, written by the worker alone
    work()

    job = replica.get(queued.id)
    assert (job.state, job.result, job.error) == (JobState.SUCCEEDED, synchronous, None)
    assert synchronous == {"enrolled": 5, "calls": 3}
    assert job.resource()["progress"] == {"done": 5, "total": 5}
    assert job.started is not None and job.finished is not None and job.created == queued.created
    assert [(before.state, before.done) for before in seen] == [(JobState.RUNNING, done) for done in (0, 2, 4)]
    assert sorted(enrolled(site, course)) == STUDENTS
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 3
    assert engine.queued() == 0
    assert [found.id for found in replica.jobs_of("writer")] == [queued.id]


def test_users_are_created_then_updated_by_jobs_as_the_routes_answer(engine, moodle, settings, site, work):
    gateway_moodle = client_for(settings)
    wanted = new_users(3)
    plan = prepare_create_users(gateway_moodle, wanted, settings)
    created = engine.submit(JobKind.USERS_CREATE, "writer", "r-create", plan, UsersCreatedSchema().dump)

    work()

    job = engine.get(created.id)
    ids = on_site(site, [user["username"] for user in wanted])
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == {
        "created": [
            {"index": n, "id": ids[user["username"]], "username": user["username"]} for n, user in enumerate(wanted)
        ]
    }
    assert moodle.writes == [MoodleFunction.CREATE_USERS] * 3  # one user a call under max_input_vars 9

    changes = [{"id": ids[user["username"]], "firstname": "Bea"} for user in wanted]
    plan = prepare_update_users(gateway_moodle, changes, settings, USERS_WRITER)
    updated = engine.submit(JobKind.USERS_UPDATE, "writer", "r-update", plan, UsersUpdatedSchema().dump)
    work()

    job = engine.get(updated.id)
    assert (job.state, job.result) == (
        JobState.SUCCEEDED,
        {"updated": [change["id"] for change in changes], "failed": []},
    )
    found = moodle_call(site, "core_user_get_users_by_field", field="id", values=[change["id"] for change in changes])
    assert {user["firstname"] for user in found} == {"Bea"}


def test_a_call_moodle_refuses_after_others_ends_the_job_partial_with_the_synchronous_error(
    engine, make_settings, moodle, site, work
):
    settings = make_settings(MOODLE_ROLE_IDS="user=7")
    gateway_moodle = client_for(settings)
    course, twin = new_course(site), new_course(site)

    def wanted(course):  # role 7 cannot be assigned in a course: the second call of two enrolments fails
        roles = [5, 5, 5, 7, 5]
        return [{"roleid": r, "userid": u, "courseid": course} for r, u in zip(roles, STUDENTS, strict=True)]

    with pytest.raises(ApiError) as synchronous:
        prepare_enrol(gateway_moodle, wanted(twin), settings, ADMIN).apply()
    queued = submit_enrol(engine, gateway_moodle, settings, wanted(course), caller=ADMIN)

    work(settings)

    job = engine.get(queued.id)
    assert (job.state, job.done, job.result) == (JobState.PARTIAL, 2, None)
    expected = error_body(synchronous.value, queued.request_id)["error"]
    expected["message"] = expected["message"].replace(f"course ({twin})", f"course ({course})")
    assert job.error == expected  # Moodle names the course
    details = job.error["details"]
    assert (details["applied"], details["not_applied"], details["outcome"]) == ([0, 1], [2, 3, 4], "partial")
    assert (details["calls"], details["failed_call"]) == (3, 2)
    assert sorted(enrolled(site, course)) == STUDENTS[:2]
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2  # nothing after the refused call


def test_a_first_call_of_unknown_outcome_ends_the_job_failed_naming_the_items_unknown(
    engine, moodle, settings, site, work
):
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(new_course(site)))
    queue_fault(site, kind="http", status=500, function="enrol_manual_enrol_users")

    work()

    job = engine.get(queued.id)
    assert (job.state, job.done) == (JobState.FAILED, 0)
    assert job.error["code"] == "badresponse"
    details = job.error["details"]
    assert (details["applied"], details["unknown"], details["not_applied"]) == ([], [0, 1], [2, 3, 4])
    assert details["outcome"] == "unknown"
    assert moodle.writes == [MoodleFunction.ENROL_USERS]  # never sent again


def test_a_bug_in_a_job_fails_it_as_internalerror_and_the_worker_goes_on_with_the_next(
    engine, moodle, settings, site, work, log_lines
):
    gateway_moodle = client_for(settings)
    course = new_course(site)
    broken = submit_enrol(engine, gateway_moodle, settings, enrolments(new_course(site)))
    after = submit_enrol(engine, gateway_moodle, settings, enrolments(course))

    def bug(write):
        if write == 1:
            raise RuntimeError("a detail of the bug")

    moodle.before_write = bug

    work()

    job = engine.get(broken.id)
    assert (job.state, job.error["code"], job.error["request_id"]) == (
        JobState.FAILED,
        "internalerror",
        broken.request_id,
    )
    assert "detail" not in job.error["message"]
    assert engine.get(after.id).state is JobState.SUCCEEDED
    assert sorted(enrolled(site, course)) == STUDENTS
    crashed = [line for line in log_lines() if line.get("event") == "job.crashed"]
    assert [(line["job_id"], line["level"]) for line in crashed] == [(broken.id, "error")]


# -- cancelled ---------------------------------------------------------------------------------------------------


def test_a_job_cancelled_while_queued_is_never_run(engine, replica, moodle, settings, site, work):
    gateway_moodle = client_for(settings)
    first_course, second_course = new_course(site), new_course(site)
    first = submit_enrol(engine, gateway_moodle, settings, enrolments(first_course))
    second = submit_enrol(engine, gateway_moodle, settings, enrolments(second_course))

    cancelled = replica.cancel(first.id)

    assert (cancelled.state, cancelled.started, cancelled.error["code"]) == (JobState.CANCELLED, None, "jobcancelled")
    work()
    assert engine.get(first.id) == cancelled  # the worker took it off the queue and left it as it was
    assert engine.get(second.id).state is JobState.SUCCEEDED
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 3  # the second job's alone
    assert enrolled(site, first_course) == {}
    with pytest.raises(ApiError) as finished:
        engine.cancel(first.id)
    assert finished.value.code is ErrorCode.JOB_FINISHED
    unknown = uuid.uuid4().hex
    assert engine.get(unknown) is None
    with pytest.raises(ApiError) as not_found:
        engine.cancel(unknown)
    assert not_found.value.code is ErrorCode.JOB_NOT_FOUND


def test_a_running_job_cancelled_stops_before_its_next_call(engine, replica, moodle, settings, site, work):
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    answers = []

    def cancel_during_the_second_call(write):
        if write == 2:  # the first call answered: its progress is recorded, the second is about to be sent
            answers.append(replica.cancel(queued.id))

    moodle.before_write = cancel_during_the_second_call

    work()

    assert [(answer.state, answer.cancel_requested) for answer in answers] == [(JobState.RUNNING, True)]
    job = engine.get(queued.id)
    assert (job.state, job.done, job.error["code"]) == (JobState.CANCELLED, 4, "jobcancelled")
    details = job.error["details"]
    assert (details["applied"], details["not_attempted"], details["outcome"]) == ([0, 1, 2, 3], [4], "partial")
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2  # the call in flight ends; no other is sent
    assert sorted(enrolled(site, course)) == STUDENTS[:4]
    assert samples(engine)[("lms_api_rq_jobs_total", (("kind", "enrol"), ("state", "cancelled")))] == 1


# -- declared lost -----------------------------------------------------------------------------------------------


@pytest.fixture
def lapse(monkeypatch, empty_redis):
    """``lapse(job_id)``: the job's lease in RQ's started-job registry runs out, as when its worker stops renewing it
    (killed, paused, cut off from Redis); its heartbeat renews nothing during the test."""
    monkeypatch.setattr(jobqueue, "HEARTBEAT_S", 60.0)
    client = redis.Redis.from_url(empty_redis)

    def run_out(job_id):
        key = StartedJobRegistry(jobqueue.QUEUE, connection=client).key
        leases = [entry for entry in client.zrange(key, 0, -1) if entry.decode().startswith(f"{job_id}:")]
        assert leases, "the job runs"
        client.zadd(key, dict.fromkeys(leases, 0), xx=True)

    yield run_out
    client.close()


def lost_during_call(number, lapse, replica, job_id, seen):
    """A hook on the worker's Moodle: as write call ``number`` is about to be sent, the job's lease runs out and a
    replica reading the job (added to ``seen``) finds its worker gone."""

    def hook(write):
        if write == number:
            lapse(job_id)
            seen.append(replica.get(job_id))

    return hook


def test_a_job_that_outlives_its_first_lease_is_kept_alive_by_its_heartbeat(
    engine, replica, moodle, make_settings, site, work, monkeypatch
):
    settings = make_settings(JOBS_WORKER_TTL_S="3")
    monkeypatch.setattr(jobqueue, "HEARTBEAT_S", 0.05)
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    seen = []

    def slow_moodle(write):
        if write == 2:
            time.sleep(4.1)  # a slow call: past the lease the job took when it started (3 s, counted in whole seconds)
            seen.append(replica.get(queued.id))

    moodle.before_write = slow_moodle

    work(settings)

    assert [(job.state, job.done) for job in seen] == [(JobState.RUNNING, 2)]
    assert engine.get(queued.id).state is JobState.SUCCEEDED
    assert sorted(enrolled(site, course)) == STUDENTS


def test_a_job_whose_heartbeat_lapsed_is_declared_lost_and_its_worker_sends_nothing_more(
    engine, replica, moodle, settings, site, work, lapse
):
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    seen = []
    moodle.before_write = lost_during_call(2, lapse, replica, queued.id, seen)

    work()

    lost = seen[-1]
    assert (lost.state, lost.done, lost.error["code"]) == (JobState.FAILED, 2, "joblost")
    details = lost.error["details"]
    assert details == {"applied": [0, 1], "unknown": [2, 3], "not_applied": [4], "outcome": "unknown"}
    assert lost.error["request_id"] == queued.request_id
    assert engine.get(queued.id) == lost  # the worker, its call answered, left the record as the replica wrote it
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2  # the call in flight went; none after it
    assert sorted(enrolled(site, course)) == STUDENTS[:4]
    counted = samples(engine)
    assert counted[("lms_api_rq_jobs_total", (("kind", "enrol"), ("state", "failed")))] == 1
    assert ("lms_api_rq_jobs_total", (("kind", "enrol"), ("state", "succeeded"))) not in counted


def test_a_user_creation_declared_lost_names_the_users_created_with_their_ids(
    engine, replica, moodle, settings, site, work, lapse
):
    wanted = new_users(3)
    plan = prepare_create_users(client_for(settings), wanted, settings)
    queued = engine.submit(JobKind.USERS_CREATE, "writer", "r-lost", plan, UsersCreatedSchema().dump)
    moodle.before_write = lost_during_call(2, lapse, replica, queued.id, [])

    work()

    details = engine.get(queued.id).error["details"]
    ids = on_site(site, [user["username"] for user in wanted])
    first, second, third = (user["username"] for user in wanted)
    assert details["created"] == [{"index": 0, "id": ids[first], "username": first}]
    assert (details["applied"], details["unknown"], details["not_applied"]) == ([0], [1], [2])
    assert second in ids and third not in ids  # the call in flight created its user; the last was never sent
    assert moodle.writes == [MoodleFunction.CREATE_USERS] * 2


def test_another_workers_cleanup_ends_a_job_whose_lease_ran_out_and_its_own_worker_sends_nothing_more(
    engine, replica, moodle, settings, site, work, lapse, log_lines
):
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    lost_lines = []

    def paused_while_another_worker_starts(write):
        if write == 2:  # its worker stops renewing the lease (paused), and another worker cleans RQ's registries
            lapse(queued.id)
            work()
            lost_lines.extend(line for line in log_lines() if line.get("event") == "job.lost")

    moodle.before_write = paused_while_another_worker_starts

    work()

    assert [line["job_id"] for line in lost_lines] == [queued.id]  # before any replica read the job
    job = replica.get(queued.id)
    assert (job.state, job.done, job.error["code"]) == (JobState.FAILED, 2, "joblost")
    details = job.error["details"]
    assert details == {"applied": [0, 1], "unknown": [2, 3], "not_applied": [4], "outcome": "unknown"}
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2  # the paused worker's call in flight went; none after
    assert sorted(enrolled(site, course)) == STUDENTS[:4]


def test_redis_away_as_the_worker_records_an_answer_ends_the_job_lost_with_that_call_unknown(
    engine, replica, moodle, settings, site, work, log_lines, monkeypatch
):
    monkeypatch.setattr(jobqueue, "HEARTBEAT_S", 0.01)  # how soon the worker asks Redis again
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    refusals = {"left": 0}

    def cut(real):
        def command(self, *args, **kwargs):
            # On the job's thread: the heartbeat, on its own, keeps the job alive meanwhile.
            if refusals["left"] and threading.current_thread() is threading.main_thread():
                refusals["left"] -= 1
                raise redis.ConnectionError("Connection refused")
            return real(self, *args, **kwargs)

        return command

    for owner, name in ((redis.Redis, "execute_command"), (redis.client.Pipeline, "execute"),
                        (redis.client.Pipeline, "immediate_execute_command")):  # fmt: skip
        monkeypatch.setattr(owner, name, cut(getattr(owner, name)))

    def redis_away_during_the_second_call(write):
        if write == 2:  # the call goes; Redis refuses the record of its answer, and the first try to end the job
            refusals["left"] = 2

    moodle.before_write = redis_away_during_the_second_call

    work()

    job = replica.get(queued.id)
    assert (job.state, job.error["code"]) == (JobState.FAILED, "joblost")
    details = job.error["details"]
    assert details == {"applied": [0, 1], "unknown": [2, 3], "not_applied": [4], "outcome": "unknown"}
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2  # nothing after the call whose answer went unrecorded
    assert sorted(enrolled(site, course)) == STUDENTS[:4]
    events = [line["event"] for line in log_lines() if line.get("job_id") == queued.id]
    assert {"job.record_unwritable", "job.redis_unreachable", "job.lost"} <= set(events)
    assert "job.crashed" not in events


def test_a_heartbeat_that_fails_is_logged_and_the_job_goes_on(
    engine, moodle, settings, site, work, log_lines, monkeypatch
):
    monkeypatch.setattr(jobqueue, "HEARTBEAT_S", 0.01)
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))
    redis_away = threading.Event()
    execute_command, execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def away(real):
        def command(self, *args, **kwargs):
            # Redis is away for the heartbeat alone: the job's own writes, on the worker's thread, still go through.
            if redis_away.is_set() and threading.current_thread() is not threading.main_thread():
                raise redis.ConnectionError("Connection refused")
            return real(self, *args, **kwargs)

        return command

    monkeypatch.setattr(redis.Redis, "execute_command", away(execute_command))
    monkeypatch.setattr(redis.client.Pipeline, "execute", away(execute))

    def lose_redis_for_a_while(write):
        if write == 1:
            redis_away.set()
            failed = lambda: any(line.get("event") == "job.heartbeat_failed" for line in log_lines())  # noqa: E731
            eventually(failed, "a heartbeat failed")
            redis_away.clear()

    moodle.before_write = lose_redis_for_a_while

    work()

    assert engine.get(queued.id).state is JobState.SUCCEEDED
    failures = [line for line in log_lines() if line.get("event") == "job.heartbeat_failed"]
    assert failures and {(line["job_id"], line["level"]) for line in failures} == {(queued.id, "warning")}
    assert sorted(enrolled(site, course)) == STUDENTS


# -- a worker told to stop ---------------------------------------------------------------------------------------


def signalled(number):
    """The worker's process sent ``number``, as by an operator; only once the worker handles it, or it would end the
    test run."""
    handler = signal.getsignal(number)
    assert callable(handler) and handler is not signal.default_int_handler, handler
    signal.raise_signal(number)


def test_a_worker_told_to_stop_mid_job_ends_the_job_and_leaves_the_next_one_queued(
    engine, moodle, settings, site, work
):
    gateway_moodle = client_for(settings)
    course, later_course = new_course(site), new_course(site)
    running = submit_enrol(engine, gateway_moodle, settings, enrolments(course))
    later = submit_enrol(engine, gateway_moodle, settings, enrolments(later_course))
    moodle.before_write = lambda write: write == 1 and signalled(signal.SIGTERM)

    work()

    assert engine.get(running.id).state is JobState.SUCCEEDED
    assert sorted(enrolled(site, course)) == STUDENTS
    assert (engine.get(later.id).state, engine.queued()) == (JobState.QUEUED, 1)  # for the next worker
    assert enrolled(site, later_course) == {}


def test_a_worker_stopped_cold_mid_call_leaves_its_job_lost_naming_the_call_in_flight(
    engine, replica, moodle, settings, site, work
):
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))

    def told_twice(write):
        if write == 1:
            signalled(signal.SIGINT)  # stop after the job
        if write == 2:
            time.sleep(1.05)  # RQ takes a second signal within a second of the first for the same one
            signalled(signal.SIGINT)  # stop now: the call about to be sent may or may not have gone

    moodle.before_write = told_twice

    work()

    job = replica.get(queued.id)
    assert (job.state, job.done, job.error["code"]) == (JobState.FAILED, 2, "joblost")
    details = job.error["details"]
    assert details == {"applied": [0, 1], "unknown": [2, 3], "not_applied": [4], "outcome": "unknown"}
    assert moodle.writes == [MoodleFunction.ENROL_USERS] * 2
    assert sorted(enrolled(site, course)) == STUDENTS[:2]


def test_a_stopping_worker_waits_on_its_command_listener_a_second_at_most(empty_redis, monkeypatch):
    connection = redis.Redis.from_url(empty_redis)
    worker = jobqueue._JobWorker([Queue(jobqueue.QUEUE, connection=connection)], connection=connection, alive_s=5)
    worker.subscribe()
    time.sleep(0.2)  # the listener waits on its connection
    # As when the listener read the reply to the unsubscribe before being told to stop: nothing more arrives.
    monkeypatch.setattr(worker.pubsub, "unsubscribe", lambda *channels: None)

    started = time.monotonic()
    worker.unsubscribe()

    assert time.monotonic() - started < jobqueue.COMMANDS_WAKE_S + 1
    assert not worker.pubsub_thread.is_alive()


# -- kept for JOBS_TTL_S -----------------------------------------------------------------------------------------


def test_a_finished_job_is_kept_jobs_ttl_s_then_leaves_its_owners_list(engine, make_settings, moodle, site, work):
    settings = make_settings(JOBS_TTL_S="1")
    gateway_moodle = client_for(settings)
    first, second = (submit_enrol(engine, gateway_moodle, settings, enrolments(new_course(site))) for _ in range(2))
    listed = []
    moodle.before_write = lambda write: write == 4 and listed.append(engine.jobs_of("writer"))  # the second's first

    work(settings)

    assert [[(job.id, job.state) for job in jobs] for jobs in listed] == [
        [(second.id, JobState.RUNNING), (first.id, JobState.SUCCEEDED)]
    ]
    eventually(lambda: engine.get(second.id) is None, "the jobs forgotten", seconds=5)
    assert engine.get(first.id) is None
    assert engine.jobs_of("writer") == []
    with pytest.raises(ApiError) as gone:
        engine.cancel(first.id)
    assert gone.value.code is ErrorCode.JOB_NOT_FOUND


# -- what every replica counts -----------------------------------------------------------------------------------


def test_the_shared_metrics_count_the_jobs_by_kind_and_state_and_the_workers_serving(
    engine, replica, moodle, settings, site, work
):
    gateway_moodle = client_for(settings)
    done = submit_enrol(engine, gateway_moodle, settings, enrolments(new_course(site)))
    dropped = submit_enrol(engine, gateway_moodle, settings, enrolments(new_course(site)))
    engine.cancel(dropped.id)
    serving = []
    moodle.before_write = lambda write: write == 1 and serving.append(samples(replica)[("lms_api_rq_workers", ())])
    assert samples(engine)[("lms_api_rq_workers", ())] == 0

    work()

    assert engine.get(done.id).state is JobState.SUCCEEDED
    for counted in (samples(engine), samples(replica)):  # counted in Redis: each replica shows the same figures
        jobs = {labels: value for (name, labels), value in counted.items() if name == "lms_api_rq_jobs_total"}
        assert jobs == {
            (("kind", "enrol"), ("state", "succeeded")): 1,
            (("kind", "enrol"), ("state", "cancelled")): 1,
        }
        # Only a job that ran has a duration: the one cancelled while queued never started.
        assert counted[("lms_api_rq_job_duration_seconds_count", (("kind", "enrol"),))] == 1
        assert counted[("lms_api_rq_job_duration_seconds_bucket", (("kind", "enrol"), ("le", "+Inf")))] == 1
        assert 0 < counted[("lms_api_rq_job_duration_seconds_sum", (("kind", "enrol"),))] < 60
        assert not any(labels == (("kind", "users.create"),) for _, labels in counted)
        assert counted[("lms_api_rq_workers", ())] == 0  # the burst worker has gone
    assert serving == [1]  # while it ran its job


# -- lms-api worker ----------------------------------------------------------------------------------------------


@pytest.fixture
def worker_environ(monkeypatch, tmp_path):
    """Nothing of the developer's environment or .env reaches the command; its ini alone, in a folder of its own."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JWT_SECRET", "worker-secret-" + "w" * 40)
    ini = tmp_path / "production.ini"
    shutil.copy(ROOT / "production.ini", ini)
    return str(ini)


def test_lms_api_worker_burst_runs_the_jobs_queued_then_returns(
    engine, settings, site, empty_redis, worker_environ, monkeypatch, capsys
):
    for name, value in {
        "JOBS_ENGINE": "rq",
        "REDIS_URL": empty_redis,
        "MOODLE_BASE_URL": site.url,
        "MOODLE_TOKEN": site.site.token,
        "MOODLE_MAX_INPUT_VARS": TWO_ENROLMENTS_A_CALL,
    }.items():
        monkeypatch.setenv(name, value)
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course))

    assert cli.main(["worker", "--ini", worker_environ, "--burst", "--name", "drain"]) == 0

    job = engine.get(queued.id)
    assert (job.state, job.result) == (JobState.SUCCEEDED, {"enrolled": 5, "calls": 3})
    assert sorted(enrolled(site, course)) == STUDENTS
    assert site.site.token not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environ", "ini", "message"),
    [
        ({}, "production.ini", "lms-api: the worker needs JOBS_ENGINE=rq, MOODLE_BASE_URL and MOODLE_TOKEN"),
        (
            {"JOBS_ENGINE": "rq"},
            "production.ini",
            "lms-api: configuration error: JOBS_ENGINE=rq needs REDIS_URL",
        ),
        ({"JOBS_ENGINE": "rq", "REDIS_URL": "redis://127.0.0.1:1/0"}, "missing.ini", "lms-api: no ini file"),
    ],
)
def test_lms_api_worker_without_its_queue_moodle_or_ini_stops_with_one_line(
    worker_environ, monkeypatch, capsys, environ, ini, message
):
    monkeypatch.setenv("MOODLE_BASE_URL", "https://moodle.example.edu")
    monkeypatch.setenv("MOODLE_TOKEN", "t")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    assert cli.main(["worker", "--ini", ini, "--burst"]) == 2

    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_a_workers_job_publishes_its_progress_to_its_submitters_channel(engine, moodle, settings, site, empty_redis):
    course = new_course(site)
    queued = submit_enrol(engine, client_for(settings), settings, enrolments(course), sub="progress-writer")
    events = RecordingEvents()
    client = redis.Redis.from_url(empty_redis)

    serve(WorkerContext(settings, client, moodle, events), burst=True)
    client.close()

    progress = events.of_type("job.progress")
    assert {channel for channel, _ in progress} == {caller_channel("progress-writer")}
    shown = [(data["job"]["id"], data["job"]["state"], data["job"]["progress"]["done"]) for _, data in progress]
    assert shown == [
        (queued.id, "running", 0),
        (queued.id, "running", 2),
        (queued.id, "running", 4),
        (queued.id, "running", 5),  # after its last call, then its end
        (queued.id, "succeeded", 5),
    ]
