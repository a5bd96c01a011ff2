"""Background jobs on RQ in Redis (``JOBS_ENGINE=rq``): the gateway only queues them, ``lms-api worker`` runs them.

A job is queued as data, never as a live object: its kind and its plan's checked items (``plan.data()``), from which
the worker rebuilds the plan on its own Moodle client without checking again. Its record is a Redis hash that every
replica reads and cancels; the worker writes its progress there after each Moodle call, before the next, and the
items of the call it is about to send (``in_flight``) before sending it. The progress is also put in the RQ job's
meta (``progress``), where RQ's own tools show it.

Exactly once: RQ never retries a job (none is queued with a retry), and a worker starts only a job still ``queued``.
While a job runs, its worker renews the job's entry in RQ's started-job registry every :data:`HEARTBEAT_S`, for
``JOBS_WORKER_TTL_S``. A job whose entry has lapsed (the worker was killed, or lost its Redis) is abandoned: a
replica that reads it, or RQ's own cleanup of the registry (through the job's failure callback), ends it ``failed``
(``joblost``) with the items applied as of the last recorded call, those not applied, and the call in flight named
as of unknown outcome: nothing is sent twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from rq import Callback, Queue, SimpleWorker, Worker, get_current_job
from rq.exceptions import DuplicateJobError
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import parse_composite_key
from rq.worker import WorkerStatus

from lms_api.audit import audit_job
from lms_api.calllog import recording_calls
from lms_api.errors import ApiError, ErrorCode, error_body
from lms_api.events import EventEngine, engine_from_settings
from lms_api.jobs import (
    FINISHED,
    JOB_BUCKETS,
    MAX_JOBS,
    Job,
    JobKind,
    JobState,
    Plan,
    not_started,
    now,
    outcome,
    publish_progress,
)
from lms_api.moodle.client import FileUpload, Moodle
from lms_api.moodle.errors import OUTCOME_PARTIAL, OUTCOME_UNKNOWN
from lms_api.moodle.functions import MoodleFunction
from lms_api.redisstate import redis_client
from lms_api.services.progress import JobStopped
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.jobs")
T = TypeVar("T")

QUEUE = "lms_api.jobs"
STATS_KEY = "lms_api:jobs:stats"  # jobs finished by kind and state, and their durations: every replica reads them
HEARTBEAT_S = 1.0  # how often a running job's worker renews its entry in the started-job registry
COMMANDS_WAKE_S = 1.0  # the longest a stopping worker waits on its listener for RQ's commands
# RQ keeps a failed job (one abandoned) this long: its data holds the items, passwords included, and the job's own
# record already says what became of them.
FAILED_DATA_TTL_S = 60
UNAVAILABLE_RETRY_S = "5"
# RQ's worker_ttl (its default: 420 s): an idle worker's key lives this long and 60 s more after each sign of life.
WORKER_TTL_S = 60
# A record is kept JOBS_TTL_S once its job ended, and this long more before: a job neither run nor ended within a
# week (no worker ever came) is forgotten; a worker that takes it later finds no record and sends nothing.
QUEUED_TTL_S = 7 * 86_400


def _record_key(job_id: str) -> str:
    return f"lms_api:job:{job_id}"


def _owned_key(sub: str) -> str:
    return f"lms_api:jobs:of:{sub}"


@dataclass(frozen=True)
class _Writes:
    """How a kind's plan is rebuilt, the Moodle function that writes its items, and its result's schema."""

    rebuild: Callable[[Moodle, Settings, dict[str, Any]], Plan]
    function: MoodleFunction
    items: str  # the parameter of ``function`` that carries the items
    dump: Callable[[Any], Any]


def _sent_before(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The users an earlier attempt created, which a resumed creation answers without sending them again (with
    ``index``, ``id`` and ``username``); none for other plans."""
    return list(data.get("created", []))


def _sending_order(total: int, before: Sequence[Mapping[str, Any]]) -> list[int]:
    """The items' indexes in the order the plan sends them: all of them but those created before."""
    skipped = {user["index"] for user in before}
    return [index for index in range(total) if index not in skipped]


def _writes(kind: JobKind) -> _Writes:
    # Imported when a job runs: the schemas and services load the app's modules, which the engine's import must not.
    from lms_api.schemas.enrolments import EnrolResultSchema
    from lms_api.schemas.users import UsersCreatedSchema, UsersUpdatedSchema
    from lms_api.services.enrolments import EnrolPlan
    from lms_api.services.userwrites import CreatePlan, UpdatePlan

    return {
        JobKind.ENROL: _Writes(EnrolPlan.from_data, MoodleFunction.ENROL_USERS, "enrolments", EnrolResultSchema().dump),
        JobKind.USERS_CREATE: _Writes(
            CreatePlan.from_data, MoodleFunction.CREATE_USERS, "users", UsersCreatedSchema().dump
        ),
        JobKind.USERS_UPDATE: _Writes(
            UpdatePlan.from_data, MoodleFunction.UPDATE_USERS, "users", UsersUpdatedSchema().dump
        ),
    }[kind]


def _text(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A record's fields as read from Redis (bytes), as text."""
    return {key.decode(): value.decode() for key, value in fields.items()}


def _job(fields: Mapping[Any, Any]) -> Job:
    text = _text(fields)
    return Job(
        id=text["id"],
        kind=JobKind(text["kind"]),
        sub=text["sub"],
        request_id=text["request_id"],
        total=int(text["total"]),
        created=text["created"],
        state=JobState(text["state"]),
        started=text.get("started") or None,
        finished=text.get("finished") or None,
        done=int(text.get("done", "0")),
        result=json.loads(text["result"]) if "result" in text else None,
        error=json.loads(text["error"]) if "error" in text else None,
        cancel_requested=text.get("cancel") == "1",
    )


class RQEngine:
    """The :class:`~lms_api.jobs.JobEngine` of a gateway on RQ: it queues, reads and cancels; workers run."""

    def __init__(self, client: redis.Redis, ttl_s: int, max_queued: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._max_queued = max_queued
        self._queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)

    @classmethod
    def from_settings(cls, settings: Settings) -> RQEngine:
        assert settings.redis_url is not None  # load_settings refuses JOBS_ENGINE=rq without it
        return cls(redis_client(settings.redis_url), settings.jobs_ttl_s, MAX_JOBS)

    def submit(self, kind: JobKind, sub: str, request_id: str, plan: Plan, dump: Callable[[Any], Any]) -> Job:
        with _redis_answers():
            return self._submit(kind, sub, request_id, plan)

    def _submit(self, kind: JobKind, sub: str, request_id: str, plan: Plan) -> Job:
        # A bound on what waits in Redis (each job holds its items) when workers are gone or too few; replicas
        # submitting at once may pass it by a few.
        if self._queue.count >= self._max_queued:
            raise ApiError(
                ErrorCode.JOBS_FULL,
                f"{self._max_queued} background jobs are queued: ask again when workers have taken some",
                headers={"Retry-After": "10"},
            )
        job = Job(uuid.uuid4().hex, kind, sub, request_id, plan.total, now())
        data = plan.data()  # type: ignore[attr-defined]  # every plan a view defers has it
        before = _sent_before(data)
        with self._redis.pipeline() as pipe:
            pipe.hset(
                _record_key(job.id),
                mapping={
                    "id": job.id,
                    "kind": kind.value,
                    "sub": sub,
                    "request_id": request_id,
                    "total": job.total,
                    "created": job.created,
                    "state": job.state.value,
                    "ttl": self._ttl_s,
                    "done": len(before),
                    # A resumed creation: the users an earlier attempt created, answered and never sent again.
                    **({"before": json.dumps(before), "created_users": json.dumps(before)} if before else {}),
                },
            )
            pipe.expire(_record_key(job.id), self._ttl_s + QUEUED_TTL_S)  # ended, it is kept JOBS_TTL_S from then
            pipe.zadd(_owned_key(sub), {job.id: time.time()})
            pipe.expire(_owned_key(sub), self._ttl_s + QUEUED_TTL_S)
            pipe.execute()
        # No retry, no timeout: a job's calls are sent once, and a call is never cut short. Unique: a submission
        # the Redis client sends again after a lost answer must not queue the job twice.
        # The description is what RQ logs and shows (rq info, dashboards): never the items, which may hold passwords.
        try:
            self._queue.enqueue(
                "lms_api.jobqueue.run",
                job.id,
                data,
                job_id=job.id,
                unique=True,
                description=f"{kind.value} job {job.id} ({job.total} items)",
                job_timeout=-1,
                result_ttl=0,
                failure_ttl=FAILED_DATA_TTL_S,
                on_failure=Callback(abandoned),
                meta={"progress": {"done": len(before), "total": job.total}},
            )
        except DuplicateJobError:  # queued by the first sending after all
            pass
        except redis.RedisError:
            with contextlib.suppress(redis.RedisError):  # the record says it was never queued, if Redis lets it
                self._redis.delete(_record_key(job.id))
                self._redis.zrem(_owned_key(sub), job.id)
            raise
        log.info("job.queued", job_id=job.id, kind=kind.value, items=job.total, engine="rq")
        return job

    def get(self, job_id: str) -> Job | None:
        with _redis_answers():
            return self._get(job_id)

    def _get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(_record_key(job_id))
        if not fields:
            return None
        job = _job(fields)
        if job.state is JobState.RUNNING and not _executing(self._redis, job_id):
            return _declare_lost(self._redis, job_id, self._ttl_s) or job
        return job

    def jobs_of(self, sub: str) -> list[Job]:
        with _redis_answers():
            # Those whose records expired leave the list: older than any kept record, they go by their score.
            self._redis.zremrangebyscore(_owned_key(sub), "-inf", time.time() - self._ttl_s - QUEUED_TTL_S)
            found: list[bytes] = self._redis.zrevrange(_owned_key(sub), 0, -1)  # type: ignore[assignment]
            ids = [job_id.decode() for job_id in found]
            jobs = [self._get(job_id) for job_id in ids]
            gone = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
            if gone:
                self._redis.zrem(_owned_key(sub), *gone)
            return [job for job in jobs if job is not None]

    def cancel(self, job_id: str) -> Job:
        with _redis_answers():
            job = self._cancel(job_id)
            log.info("job.cancel_requested", job_id=job_id, state=job.state.value)
            return self._get(job_id) or job

    def _cancel(self, job_id: str) -> Job:
        key = _record_key(job_id)
        while True:
            with self._redis.pipeline() as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                fields = pipe.hgetall(key)
                if not fields:
                    raise ApiError(ErrorCode.JOB_NOT_FOUND, f"No background job {job_id} is kept")
                job = _job(fields)
                if job.state in FINISHED:
                    raise ApiError(
                        ErrorCode.JOB_FINISHED, f"The job has finished ({job.state.value}): there is nothing to cancel"
                    )
                pipe.multi()
                pipe.hset(key, "cancel", "1")
                if job.state is JobState.QUEUED:  # the worker that takes it finds it finished
                    body = not_started(job)
                    _finish(pipe, job, JobState.CANCELLED, self._ttl_s, error=body)
                try:
                    pipe.execute()
                except redis.WatchError:  # its worker took it meanwhile: it stops after its call
                    continue
            if job.state is JobState.QUEUED:  # its data (the items, passwords included) leaves Redis now
                audit_job(job, JobState.CANCELLED, body, ())
                with contextlib.suppress(redis.RedisError):
                    self._queue.remove(job_id)
                    RQJob(job_id, connection=self._redis, serializer=JSONSerializer).delete()
            return job

    def queued(self) -> int:
        with _redis_answers():
            return self._queue.count

    def readiness(self) -> dict[str, Any]:
        """The workers on the queue and the jobs waiting; none is not unready: the gateway queues, workers come."""
        try:
            return {"engine": "rq", "workers": self._workers(), "queued": self.queued()}
        except redis.RedisError:
            return {"engine": "rq", "redis": "unreachable: jobs can be neither queued nor read"}

    def _workers(self) -> int:
        """Workers on the queue whose own key lives: RQ's set of workers keeps a killed one until a live worker's
        maintenance prunes it, and never when none is left."""
        keys = Worker.all_keys(connection=self._redis, queue=self._queue)
        return int(self._redis.exists(*keys)) if keys else 0

    def shared_metrics(self) -> Iterator[Metric]:
        """Jobs finished by kind and state, and how long they ran, as every worker and replica counted them in
        Redis: each replica shows the same figures (aggregate them with ``max``, not ``sum``); none while Redis
        cannot be reached (the gateway's own metrics are still told)."""
        try:
            stats = _text(self._redis.hgetall(STATS_KEY))
            workers = self._workers()
        except redis.RedisError:
            return
        jobs = CounterMetricFamily(
            "lms_api_rq_jobs",
            "Background jobs on RQ finished, by kind and final state (shared)",
            labels=["kind", "state"],
        )
        durations = HistogramMetricFamily(
            "lms_api_rq_job_duration_seconds", "Time a background job on RQ ran, start to end (shared)", labels=["kind"]
        )
        for kind in JobKind:
            for state in FINISHED:
                count = int(stats.get(f"jobs:{kind.value}:{state.value}", "0"))
                if count:
                    jobs.add_metric([kind.value, state.value], count)
            buckets = [
                (
                    "+Inf" if bound == float("inf") else str(bound),
                    int(stats.get(f"seconds_le:{kind.value}:{bound}", "0")),
                )
                for bound in (*JOB_BUCKETS, float("inf"))
            ]
            if buckets[-1][1]:
                durations.add_metric([kind.value], buckets, float(stats[f"seconds_sum:{kind.value}"]))
        yield jobs
        yield durations
        yield GaugeMetricFamily(
            "lms_api_rq_workers",
            "lms-api worker processes on the queue (shared): jobs queued with none wait for one",
            value=workers,
        )

    def close(self) -> None:
        self._redis.close()


@contextlib.contextmanager
def _redis_answers() -> Iterator[None]:
    """A gateway's request on the jobs, answered ``503 jobsunavailable`` while their Redis cannot be reached."""
    try:
        yield
    except redis.RedisError as error:
        log.warning("jobs.redis_unreachable", error=type(error).__name__)
        raise ApiError(
            ErrorCode.JOBS_UNAVAILABLE,
            "The store of background jobs cannot be reached: nothing was queued, read or cancelled",
            headers={"Retry-After": UNAVAILABLE_RETRY_S},
        ) from None


def _executing(client: redis.Redis, job_id: str) -> bool:
    """Whether RQ's started-job registry holds an execution of the job that its worker has renewed lately. Its
    entries expire by the worker's clock, compared here with Redis's, not this host's: a replica's clock running
    ahead must not end live jobs (``JOBS_WORKER_TTL_S`` is the margin for the worker's own)."""
    seconds, _ = client.time()
    live = client.zrangebyscore(StartedJobRegistry(QUEUE, connection=client).key, seconds, "+inf")
    return any(parse_composite_key(entry.decode())[0] == job_id for entry in live)  # type: ignore[union-attr]


def abandoned(job: RQJob, connection: redis.Redis, *exc_info: Any) -> None:
    """The job's failure callback: RQ calls it when its cleanup of the started-job registry finds the job's worker
    gone, or when the job's function raised. Either way no call of the job is sent any more: a job still queued
    (its worker died as it took it) ends failed with nothing sent."""
    _declare_lost(connection, job.id, _kept_s(connection, job.id), queued_too=True)


def _kept_s(client: redis.Redis, job_id: str) -> int:
    """How long a job's record is kept once ended: ``JOBS_TTL_S``, as its gateway wrote it."""
    return int(client.hget(_record_key(job_id), "ttl") or 0)


def _declare_lost(client: redis.Redis, job_id: str, ttl_s: int, *, queued_too: bool = False) -> Job | None:
    """End a running job whose worker is gone, as of its last recorded call (with ``queued_too``, a queued one as
    never started); None when it changed meanwhile."""
    key = _record_key(job_id)
    with client.pipeline() as pipe:
        pipe.watch(key)  # type: ignore[no-untyped-call]  # a worker still alive writes it before any call
        fields = pipe.hgetall(key)
        if not fields:
            return None
        job = _job(fields)
        if job.state is not JobState.RUNNING and not (queued_too and job.state is JobState.QUEUED):
            return None
        text = _text(fields)
        before = json.loads(text.get("before", "[]"))
        order = _sending_order(job.total, before)
        sent = job.done - len(before)  # items of the plan's own calls answered
        start, stop = (int(bound) for bound in (text.get("in_flight") or f"{sent}:{sent}").split(":"))
        details: dict[str, Any] = {
            "applied": sorted([user["index"] for user in before] + order[:sent]),
            "unknown": order[start:stop],
            "not_applied": order[stop:],
        }
        if stop > start:
            details["outcome"] = OUTCOME_UNKNOWN
        elif details["applied"]:
            details["outcome"] = OUTCOME_PARTIAL
        if "created_users" in text:
            details["created"] = json.loads(text["created_users"])
        error = ApiError(
            ErrorCode.JOB_LOST,
            f"The worker stopped mid-job: {job.done} of {job.total} items applied, "
            f"{stop - start} in a call of unknown outcome; nothing was sent again",
            details,
        )
        pipe.multi()
        _finish(pipe, job, JobState.FAILED, ttl_s, error=error_body(error, job.request_id)["error"])
        try:
            pipe.execute()
        except redis.WatchError:
            return None
    log.warning("job.lost", job_id=job_id, done=job.done, unknown=stop - start)
    audit_job(job, JobState.FAILED, error_body(error, job.request_id)["error"], [])
    fields = client.hgetall(key)
    return _job(fields) if fields else None


def _finish(
    pipe: Any,
    job: Job,
    state: JobState,
    ttl_s: int,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    seconds: float | None = None,
) -> None:
    """Write the job's end, and count it in :data:`STATS_KEY` (with ``seconds``, the time it ran)."""
    key = _record_key(job.id)
    pipe.hincrby(STATS_KEY, f"jobs:{job.kind.value}:{state.value}", 1)
    if seconds is not None:
        pipe.hincrbyfloat(STATS_KEY, f"seconds_sum:{job.kind.value}", seconds)
        for bound in (*JOB_BUCKETS, float("inf")):
            if seconds <= bound:
                pipe.hincrby(STATS_KEY, f"seconds_le:{job.kind.value}:{bound}", 1)
    fields: dict[str, Any] = {"state": state.value, "finished": now()}
    if state is JobState.SUCCEEDED:
        fields |= {"done": job.total, "result": json.dumps(result)}
    if error is not None:
        fields["error"] = json.dumps(error)
    pipe.hset(key, mapping=fields)
    pipe.hdel(key, "in_flight")
    pipe.expire(key, ttl_s)


class _JournalledMoodle:
    """The worker's Moodle client for one job: the items of each write call are recorded as in flight before it is
    sent, and as applied once it has answered, before anything else is sent. A record that cannot be written (Redis
    away) stops the job: ``journal_failed``, and its end is left to :func:`_declare_lost`."""

    def __init__(self, moodle: Moodle, client: redis.Redis, job: Job, writes: _Writes, before: list[Any]) -> None:
        self._moodle, self._redis, self._job, self._writes = moodle, client, job, writes
        self._order = _sending_order(job.total, before)
        self._before = len(before)
        self._sent = 0  # items of the plan's own calls answered, in the order sent
        self._created: list[dict[str, Any]] = list(before)
        self.journal_failed = False

    @property
    def max_input_vars(self) -> int:
        return self._moodle.max_input_vars

    def require(self, *functions: MoodleFunction) -> None:
        self._moodle.require(*functions)

    def clean(self, text: str) -> str:
        return self._moodle.clean(text)

    def upload(self, files: Sequence[FileUpload], itemid: int = 0) -> list[dict[str, Any]]:
        return self._moodle.upload(files, itemid)

    def forget_functions(self) -> None:
        self._moodle.forget_functions()

    def call(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Any:
        if function is not self._writes.function or params is None:
            return self._moodle.call(function, params)
        sent = len(params[self._writes.items])
        if not self.record(["in_flight", f"{self._sent}:{self._sent + sent}"]):
            raise JobStopped()  # declared lost by a replica meanwhile: its record stands, and nothing more is sent
        answer = self._moodle.call(function, params)
        recorded = ["done", str(self._before + self._sent + sent), "in_flight", ""]
        if function is MoodleFunction.CREATE_USERS and isinstance(answer, list) and len(answer) == sent:
            # The new users' ids, which a job declared lost names as a failed creation's account does.
            self._created += [
                {"index": self._order[self._sent + offset], "id": user.get("id"), "username": user.get("username")}
                for offset, user in enumerate(answer)
            ]
            recorded += ["created_users", json.dumps(sorted(self._created, key=lambda user: user["index"]))]
        self._sent += sent
        self.record(recorded)
        job = get_current_job()
        if job is not None:  # shown by RQ's own tools; the record above is what the gateway answers
            job.meta["progress"] = {"done": self._before + self._sent, "total": self._job.total}
            with contextlib.suppress(redis.RedisError):
                job.save_meta()  # type: ignore[no-untyped-call]
        return answer

    def record(self, fields: list[str]) -> bool:
        """Set the record's ``fields`` while the job runs; False once it does not."""
        try:
            return _while_running(self._redis, [_record_key(self._job.id)], fields)
        except redis.RedisError:
            self.journal_failed = True
            raise JobStopped() from None

    def stop_requested(self) -> bool:
        """Cancelled, or declared lost by a replica (its entry lapsed, Redis away): no call after that."""
        try:
            cancel, state = self._redis.hmget(_record_key(self._job.id), ["cancel", "state"])
        except redis.RedisError:
            self.journal_failed = True
            return True
        return bool(cancel == b"1" or state != JobState.RUNNING.value.encode())


_WHILE_RUNNING = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def _while_running(client: redis.Redis, keys: list[str], fields: list[str]) -> bool:
    """Set the record's ``fields`` (name, value, ...) if its job is still running: one a replica has declared lost
    keeps the account it was given."""
    return bool(client.eval(_WHILE_RUNNING, len(keys), *keys, *fields))


@dataclass
class WorkerContext:
    """What ``lms-api worker`` gives the jobs it runs."""

    settings: Settings
    redis: redis.Redis
    moodle: Moodle
    events: EventEngine | None = None  # where the jobs' progress is published


_context: WorkerContext | None = None


class _JobWorker(SimpleWorker):
    """RQ's worker that runs a job in its own process, renewing the job's started-job registry entry while it runs
    (for ``JOBS_WORKER_TTL_S``): RQ's own worker renews it only between jobs, so a long job would be found abandoned
    while running."""

    def __init__(self, *args: Any, alive_s: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._alive_s = alive_s

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        return self._alive_s

    def subscribe(self) -> None:
        """RQ's listener for commands sent to this worker, waking each ``COMMANDS_WAKE_S`` rather than RQ's 60 s:
        redis-py's ``stop()`` waits for the listener to see it, and a listener that read the reply to RQ's
        unsubscribe before that went back to a 60 s read, so a SIGTERM held the worker up to a minute after its job."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ declares it None
            sleep_time=COMMANDS_WAKE_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop_beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop_beating), daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop_beating.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: RQJob, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # the next beat tries again; past JOBS_WORKER_TTL_S the job is abandoned, and stops
                log.warning("job.heartbeat_failed", job_id=job.id, exc_info=True)


def serve(context: WorkerContext, name: str | None = None, *, burst: bool = False) -> None:
    """Run jobs from the gateway's queue until stopped (SIGTERM: after the job running ends), or with ``burst`` until
    none is queued, one at a time, in this process: a job killed with its worker is one whose calls stopped with it.

    RQ gets a Redis client of its own: it lengthens its client's timeouts for its blocking reads, which the job's
    records must not wait on."""
    global _context
    if context.events is None:  # the jobs' progress goes where the gateway's events go
        context = dataclasses.replace(context, events=engine_from_settings(context.settings))
    _context = context
    assert context.settings.redis_url is not None
    connection = redis.Redis.from_url(context.settings.redis_url)
    worker = _JobWorker(
        [Queue(QUEUE, connection=connection, serializer=JSONSerializer)],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        worker_ttl=max(WORKER_TTL_S, context.settings.jobs_worker_ttl_s),
        alive_s=context.settings.jobs_worker_ttl_s,
    )
    worker.work(burst=burst, with_scheduler=False)


def run(job_id: str, data: dict[str, Any]) -> None:
    """The function RQ runs: one job, from its record and its plan's data."""
    assert _context is not None, "run by lms-api worker"
    client, settings, key = _context.redis, _context.settings, _record_key(job_id)
    with client.pipeline() as pipe:
        pipe.watch(key)  # type: ignore[no-untyped-call]
        fields = pipe.hgetall(key)
        if not fields or _job(fields).state is not JobState.QUEUED:  # cancelled while queued, or expired
            return
        job = _job(fields)
        pipe.multi()
        pipe.hset(key, mapping={"state": JobState.RUNNING.value, "started": now()})
        try:
            pipe.execute()
        except redis.WatchError:  # cancelled as it was taken
            return
    _apply(client, settings, job, data)


def _apply(client: redis.Redis, settings: Settings, job: Job, data: dict[str, Any]) -> None:
    assert _context is not None
    writes = _writes(job.kind)
    with structlog.contextvars.bound_contextvars(job_id=job.id, request_id=job.request_id), recording_calls() as calls:
        started = time.perf_counter()
        log.info("job.started", kind=job.kind.value, items=job.total)
        events = _context.events
        job.state, job.started = JobState.RUNNING, now()
        publish_progress(events, job.sub, job.summary())
        journal = _JournalledMoodle(_context.moodle, client, job, writes, _sent_before(data))
        plan = writes.rebuild(journal, settings, data)

        def progress(done: int, total: int) -> None:
            if journal.stop_requested():
                raise JobStopped()
            job.done = done
            publish_progress(events, job.sub, job.summary())

        result, error, state = outcome(job, plan, writes.dump, progress)
        seconds = time.perf_counter() - started
        if journal.journal_failed:
            # Its record may lack the last call's answer: the job ends as one whose worker was lost, with that
            # call's items of unknown outcome, as soon as Redis answers again.
            log.warning("job.record_unwritable", kind=job.kind.value)
            _until_redis_answers(lambda: _declare_lost(client, job.id, settings.jobs_ttl_s))
            state, error = JobState.FAILED, {"code": ErrorCode.JOB_LOST.value}
        else:
            ended = _until_redis_answers(lambda: _end(client, job, state, settings.jobs_ttl_s, result, error, seconds))
            if ended:  # else a replica declared it lost, and audited it so
                audit_job(job, state, error, calls.functions)
                job.state, job.error, job.finished = state, error, now()
                job.done = job.total if state is JobState.SUCCEEDED else job.done
                publish_progress(events, job.sub, job.summary())
        log.info(
            "job.finished",
            kind=job.kind.value,
            state=state.value,
            items=job.total,
            moodle_calls=len(calls.calls),
            moodle_ms=calls.ms,
            ms=round(seconds * 1000, 1),
            code=None if error is None else error["code"],
        )


def _end(
    client: redis.Redis,
    job: Job,
    state: JobState,
    ttl_s: int,
    result: Any,
    error: dict[str, Any] | None,
    seconds: float,
) -> bool:
    """Write the job's end, unless a replica declared it lost meanwhile (its record stands): whether it wrote it."""
    key = _record_key(job.id)
    with client.pipeline() as pipe:
        while True:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            if pipe.hget(key, "state") != JobState.RUNNING.value.encode():
                return False
            pipe.multi()
            _finish(pipe, job, state, ttl_s, result=result, error=error, seconds=seconds)
            try:
                pipe.execute()
                return True
            except redis.WatchError:  # cancelled meanwhile: its end is written all the same
                continue


def _until_redis_answers(write: Callable[[], T]) -> T:
    """Run ``write`` once Redis answers: a job's end is never left unwritten by a worker still running."""
    while True:
        try:
            return write()
        except redis.RedisError:
            log.warning("job.redis_unreachable")
            time.sleep(HEARTBEAT_S)
