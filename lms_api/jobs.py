"""Background jobs: a write of many Moodle calls (enrolments, users created or updated) checked in the request, then
applied outside it, with its progress and outcome kept as a job resource (``/api/moodle/jobs``).

A view hands the view deriver a :class:`Deferred` write (its kind and checked plan); the deriver applies it at once,
or, when the caller sends ``Prefer: respond-async`` (or ``JOBS_FORCE_ASYNC`` and the write is over
``JOBS_SYNC_MAX_ITEMS`` items), submits it to the :class:`JobEngine` and answers 202 with the job.

The engine here is the embedded one: a store in the process and a pool of ``JOBS_WORKERS`` threads of its own, never
a waitress thread; its jobs are lost when the process stops. ``JOBS_ENGINE=rq`` puts them on RQ in Redis instead
(:mod:`lms_api.jobqueue`), run by ``lms-api worker`` processes, behind the same :class:`JobEngine` calls.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client.core import Metric
from pyramid.config import Configurator
from pyramid.request import Request

from lms_api.audit import audit_job
from lms_api.calllog import recording_calls
from lms_api.errors import ApiError, ErrorCode, error_body
from lms_api.events import EventEngine, EventType, caller_channel
from lms_api.moodle.errors import OUTCOME_PARTIAL
from lms_api.redisstate import no_request_snapshot
from lms_api.security import Identity, Scope
from lms_api.services.progress import JobStopped, Progress
from lms_api.settings import Settings

if TYPE_CHECKING:
    from lms_api.metrics import GatewayMetrics

log = structlog.get_logger("lms_api.jobs")

PREFER_HEADER = "Prefer"
PREFERENCE_APPLIED_HEADER = "Preference-Applied"
RESPOND_ASYNC = "respond-async"
# Jobs kept at most, finished ones out first (oldest first) when a new one comes: the store's bound in memory.
MAX_JOBS = 10_000
RETRY_AFTER_S = 1  # what a poll of a job still queued or running is told
# The details of a failed write that name the items it applied before it failed.
APPLIED_ITEMS = ("applied", "created", "updated")
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)  # a job's duration, in seconds


class JobKind(StrEnum):
    ENROL = "enrol"
    USERS_CREATE = "users.create"
    USERS_UPDATE = "users.update"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"  # some items applied, then a call failed
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.PARTIAL, JobState.CANCELLED})


class Plan(Protocol):
    """A checked write: how many items it writes, and the calls that write them (:mod:`lms_api.services.progress`)."""

    @property
    def total(self) -> int: ...

    def apply(self, progress: Progress | None = None) -> Any: ...


@dataclass(frozen=True)
class Deferred:
    """What a view of a write that may run as a job returns: the deriver applies ``plan`` now or submits it."""

    kind: JobKind
    plan: Plan


@dataclass
class Job:
    """A job's record; changed only under its engine's lock."""

    id: str
    kind: JobKind
    sub: str
    request_id: str  # the submission's: the job's log lines and error carry it
    total: int
    created: str
    state: JobState = JobState.QUEUED
    started: str | None = None
    finished: str | None = None
    done: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    finished_at: float = 0.0  # monotonic, for JOBS_TTL_S
    cancel_requested: bool = False

    def resource(self) -> dict[str, Any]:
        """The job as the API shows it (through :class:`~lms_api.schemas.jobs.JobSchema`)."""
        shown: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": {"done": self.done, "total": self.total},
        }
        if self.state is JobState.SUCCEEDED:
            shown["result"] = self.result
        elif self.error is not None:
            shown["error"] = self.error
        return shown

    def summary(self) -> dict[str, Any]:
        """The job as a listing shows it: :meth:`resource` without the ``result``, and its ``error`` without the
        ``details``, as both grow with the items (a creation of 5,000 users answers 1.5 MB): its own URL has them."""
        shown = self.resource()
        shown.pop("result", None)
        if "error" in shown:
            shown["error"] = {name: value for name, value in shown["error"].items() if name != "details"}
        return shown


class JobEngine(Protocol):
    """Where jobs are queued, run and kept; the embedded engine, or one on a shared queue."""

    def submit(self, kind: JobKind, sub: str, request_id: str, plan: Plan, dump: Callable[[Any], Any]) -> Job:
        """Queue ``plan``; the job as queued. ``dump`` makes the result of what ``plan.apply`` returns."""
        ...

    def get(self, job_id: str) -> Job | None:
        """The job as it is now (a copy: the engine goes on changing its own)."""
        ...

    def jobs_of(self, sub: str) -> list[Job]:
        """``sub``'s jobs, newest first."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or stop a running one between two calls; ``jobfinished`` for a finished one."""
        ...

    def queued(self) -> int:
        """Jobs waiting to start."""
        ...

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` says of the jobs: the engine, the workers that run them and the jobs waiting."""
        ...

    def shared_metrics(self) -> Iterator[Metric]:
        """Metrics that the engine's processes keep together (none for the embedded engine: it counts its own)."""
        ...

    def close(self) -> None: ...


def prefers_async(request: Request) -> bool:
    """The request's ``Prefer`` header (RFC 7240) holds ``respond-async``: preferences are separated by commas (the
    header given several times is one list), each a token, case-insensitive, with an optional value and parameters
    after ``;``. A preference that cannot be read is ignored, as the RFC says of those not understood."""
    return any(name == RESPOND_ASYNC for name in preferences(request.headers.get(PREFER_HEADER, "")))


_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_WORD = rf'(?:{_NAME}|"(?:[^"\\]|\\.)*")'
_PREFERENCE = re.compile(
    rf"[ \t]*({_NAME})(?:[ \t]*=[ \t]*{_WORD})?(?:[ \t]*;(?:[ \t]*{_NAME}(?:[ \t]*=[ \t]*{_WORD})?)?)*[ \t]*"
)
_ELEMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^,"])+')  # up to a comma outside a quoted string


def preferences(header: str) -> list[str]:
    """The names of the preferences of a ``Prefer`` value, in lower case."""
    names = []
    for element in _ELEMENT.findall(header):
        preference = _PREFERENCE.fullmatch(element)
        if preference is not None:
            names.append(preference.group(1).lower())
    return names


def runs_as_job(request: Request, total: int) -> bool:
    """Whether a write of ``total`` items runs as a background job: asked for (``Prefer: respond-async``), or made one
    by ``JOBS_FORCE_ASYNC`` past ``JOBS_SYNC_MAX_ITEMS``. Never for a caller without ``jobs:read``, who could neither
    read nor cancel it: its preference is ignored (RFC 7240 lets a server), and a write only the setting would make a
    job is refused (403), before anything is queued or written."""
    settings: Settings = request.lms_settings
    forced = settings.jobs_force_async and total > settings.jobs_sync_max_items
    identity: Identity = request.identity
    if identity.has_scope(Scope.JOBS_READ):
        return forced or prefers_async(request)
    if forced:
        raise ApiError(
            ErrorCode.FORBIDDEN,
            f"A write of {total} items (over JOBS_SYNC_MAX_ITEMS, {settings.jobs_sync_max_items}) runs as a "
            f"background job, which needs the {Scope.JOBS_READ.value} scope to be read: nothing was written",
            {"required_scope": Scope.JOBS_READ.value},
        )
    return False


def outcome(
    job: Job, plan: Plan, dump: Callable[[Any], Any], progress: Progress
) -> tuple[Any, dict[str, Any] | None, JobState]:
    """Apply ``plan``: its dumped result, or its error, and the state the job ends in."""
    try:
        return dump(plan.apply(progress)), None, JobState.SUCCEEDED
    except ApiError as failure:
        error = error_body(failure, job.request_id)["error"]
        if failure.code == ErrorCode.JOB_CANCELLED:
            return None, error, JobState.CANCELLED
        return None, error, JobState.PARTIAL if applied_some(failure.details) else JobState.FAILED
    except JobStopped:  # stopped by its engine before a call (a job on RQ declared lost): its record says the rest
        return None, None, JobState.FAILED
    except Exception:
        log.exception("job.crashed", kind=job.kind.value)
        crash = ApiError(ErrorCode.INTERNAL_ERROR, "The job failed on a gateway bug; its id finds its log lines")
        return None, error_body(crash, job.request_id)["error"], JobState.FAILED


def applied_some(details: dict[str, Any]) -> bool:
    """A failed write's details say some of its items were applied: its outcome is partial, or it names items
    ``applied`` (enrolments), ``created`` or ``updated`` (users), whatever the failed call's own outcome (a call of
    unknown outcome after applied ones is still a write partly done)."""
    return details.get("outcome") == OUTCOME_PARTIAL or any(details.get(name) for name in APPLIED_ITEMS)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EmbeddedEngine:
    """Jobs run by a pool of threads of the process, kept in its memory: ``ttl_s`` once finished, ``max_jobs`` at
    most. A write stops between two Moodle calls when cancelled; :meth:`close` (the server's, once it has stopped
    serving) cancels what is queued, stops what runs after its current call, and waits for the threads, so that a
    stopping process never cuts a call short."""

    def __init__(
        self,
        workers: int,
        ttl_s: float,
        metrics: GatewayMetrics | None = None,
        *,
        max_jobs: int = MAX_JOBS,
        events: EventEngine | None = None,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lms-api-job")
        self._events = events
        self._workers = workers
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, kind: JobKind, sub: str, request_id: str, plan: Plan, dump: Callable[[Any], Any]) -> Job:
        job = Job(uuid.uuid4().hex, kind, sub, request_id, plan.total, now())
        stopping = ApiError(ErrorCode.JOBS_STOPPING, "The gateway is stopping: no background job was queued")
        with self._lock:
            if self._closing:
                raise stopping
            self._make_room()
            try:
                self._pool.submit(self._run, job, plan, dump)
            except RuntimeError as error:  # the interpreter is exiting: its pools take no more work
                raise stopping from error
            self._jobs[job.id] = job  # its thread waits for the lock: it finds the job kept
            queued = copy.copy(job)
        log.info("job.queued", job_id=job.id, kind=kind.value, items=plan.total)
        return queued

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            return None if job is None else copy.copy(job)

    def jobs_of(self, sub: str) -> list[Job]:
        with self._lock:
            self._expire()
            return [copy.copy(job) for job in reversed(self._jobs.values()) if job.sub == sub]

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:  # expired since it was read
                raise ApiError(ErrorCode.JOB_NOT_FOUND, f"No background job {job_id} is kept")
            if job.state in FINISHED:
                raise ApiError(
                    ErrorCode.JOB_FINISHED, f"The job has finished ({job.state.value}): there is nothing to cancel"
                )
            job.cancel_requested = True
            if job.state is JobState.QUEUED:  # its thread, when it comes, finds it finished
                self._finish(job, JobState.CANCELLED, error=not_started(job))
            current = copy.copy(job)
        log.info("job.cancel_requested", job_id=job.id, state=current.state.value)
        if current.state is JobState.CANCELLED:
            publish_progress(self._events, current.sub, current.summary())
            audit_job(current, current.state, current.error, ())
        return current

    def queued(self) -> int:
        with self._lock:
            return sum(job.state is JobState.QUEUED for job in self._jobs.values())

    def readiness(self) -> dict[str, Any]:
        return {"engine": "embedded", "workers": self._workers, "queued": self.queued()}

    def shared_metrics(self) -> Iterator[Metric]:
        return iter(())

    def close(self) -> None:
        with self._lock:  # one section: no queued job starts, and none is submitted, once it is marked
            self._closing = True
            unfinished = [job for job in self._jobs.values() if job.state not in FINISHED]
            queued = [job for job in unfinished if job.state is JobState.QUEUED]
            for job in unfinished:
                job.cancel_requested = True
            for job in queued:
                self._finish(job, JobState.CANCELLED, error=not_started(job, "Cancelled as the gateway stopped"))
            cancelled = [copy.copy(job) for job in queued]
        log.info("jobs.stopping", queued=len(queued), running=len(unfinished) - len(queued))
        for job in cancelled:
            audit_job(job, job.state, job.error, ())
        self._pool.shutdown(wait=True, cancel_futures=True)
        log.info("jobs.stopped")

    def _run(self, job: Job, plan: Plan, dump: Callable[[Any], Any]) -> None:
        no_request_snapshot()
        with (
            structlog.contextvars.bound_contextvars(job_id=job.id, request_id=job.request_id),
            recording_calls() as calls,
        ):
            with self._lock:
                if job.state is not JobState.QUEUED:  # cancelled while queued
                    return
                job.state, job.started = JobState.RUNNING, now()
                running = job.summary()
            publish_progress(self._events, job.sub, running)
            started = time.perf_counter()
            log.info("job.started", kind=job.kind.value, items=job.total)

            def progress(done: int, total: int) -> None:
                with self._lock:
                    job.done = done
                    if job.cancel_requested:
                        raise JobStopped()
                    advanced = job.summary()
                publish_progress(self._events, job.sub, advanced)

            with self._lock:  # cancelled (or the engine closed) since it was marked running: no call at all
                cancelled = job.cancel_requested
            result, error, state = (
                (None, not_started(job), JobState.CANCELLED) if cancelled else outcome(job, plan, dump, progress)
            )
            seconds = time.perf_counter() - started
            with self._lock:
                self._finish(job, state, result=result, error=error)
                ended = job.summary()
            publish_progress(self._events, job.sub, ended)
            audit_job(job, state, error, calls.functions)
            if self._metrics is not None:
                self._metrics.job_seconds.labels(job.kind.value).observe(seconds)
                self._metrics.observe_calls(calls)
            log.info(
                "job.finished",
                kind=job.kind.value,
                state=state.value,
                done=job.done,
                items=job.total,
                moodle_calls=len(calls.calls),
                moodle_ms=calls.ms,
                ms=round(seconds * 1000, 1),
                code=None if error is None else error["code"],
            )

    def _finish(self, job: Job, state: JobState, *, result: Any = None, error: dict[str, Any] | None = None) -> None:
        job.state, job.finished, job.finished_at = state, now(), time.monotonic()
        job.result, job.error = result, error
        if state is JobState.SUCCEEDED:
            job.done = job.total
        if self._metrics is not None:
            self._metrics.jobs.labels(job.kind.value, state.value).inc()

    def _expire(self) -> None:
        deadline = time.monotonic() - self._ttl_s
        for job_id in [job.id for job in self._jobs.values() if job.state in FINISHED and job.finished_at < deadline]:
            del self._jobs[job_id]

    def _make_room(self) -> None:
        self._expire()
        if len(self._jobs) < self._max_jobs:
            return
        oldest = next((job for job in self._jobs.values() if job.state in FINISHED), None)
        if oldest is None:
            raise ApiError(
                ErrorCode.JOBS_FULL,
                f"{self._max_jobs} background jobs are queued or running: ask again when some have finished",
                headers={"Retry-After": "10"},
            )
        del self._jobs[oldest.id]


def publish_progress(events: EventEngine | None, sub: str, summary: dict[str, Any]) -> None:
    """Tell the caller's streams where its job stands (``job.progress``, the job as a listing shows it): when it
    starts, after each Moodle call, and when it ends."""
    if events is not None:
        events.publish(caller_channel(sub), EventType.JOB_PROGRESS, {"job": summary})


def not_started(job: Job, why: str = "Cancelled") -> dict[str, Any]:
    """The error of a job cancelled before its first Moodle call, whichever engine kept it."""
    cancelled = ApiError(ErrorCode.JOB_CANCELLED, f"{why} before it started: nothing was written")
    error: dict[str, Any] = error_body(cancelled, job.request_id)["error"]
    return error


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    if settings.jobs_engine == "rq":
        from lms_api.jobqueue import RQEngine  # only a gateway on RQ loads it

        config.registry.jobs = RQEngine.from_settings(settings)
    else:
        config.registry.jobs = EmbeddedEngine(
            settings.jobs_workers, settings.jobs_ttl_s, config.registry.metrics, events=config.registry.events
        )
