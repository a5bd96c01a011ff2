"""Prometheus metrics at ``GET /metrics``, answered only to ``METRICS_ALLOWED_NETWORKS`` (404 to anyone else).

Counters and histograms are fed once per request from its summary (route, status, the Moodle calls and cache
answers in its call log); the bulkhead, the breaker and the Redis fallback are read when scraped. Labels are
bounded: route names, methods, statuses, function names and error codes of the table, never ids or raw paths.

Under gunicorn with several workers, a scrape is answered by one of them, and each would tell its own counts. There,
the hooks of :mod:`lms_api.gunicorn` name a directory in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multi-process mode): each worker writes its counters and histograms to files of its own in it, and a scrape answers
their sum over every worker of the master, those gone included. What is read when scraped (the bulkhead, the breaker,
the streams, the Redis fallback) stays the answering worker's; the bulkhead's refusals, a count, are summed too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.cache import ReadCache, RedisStore
from lms_api.caller import is_operator
from lms_api.calllog import CallLog
from lms_api.errors import ApiError
from lms_api.events import EventEngine
from lms_api.jobs import JOB_BUCKETS, JobEngine
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.guard import BreakerState, Bulkhead
from lms_api.ratelimit import REFUSED_BUDGET, RedisCounter
from lms_api.ratelimit import Counter as RateCounter

METRICS_PATH = "/metrics"
BREAKER_STATES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# prometheus_client's name for it: where the processes of one gunicorn master write their values, summed when scraped.
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
REFUSALS_HELP = "Calls refused for want of a slot"


class GatewayMetrics:
    """The metrics of one app: a registry of its own, as tests build many apps in one process; or, with
    ``PROMETHEUS_MULTIPROC_DIR`` set, the sums of the files every process of the directory writes (one app each)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        directory = os.environ.get(MULTIPROCESS_DIRECTORY)
        if directory:
            write_values_to_files()
            MultiProcessCollector(self.registry, directory)  # type: ignore[no-untyped-call]
        # In files, the values reach the scrape through the collector: registered as well, they would be told twice.
        registry = None if directory else self.registry
        # The bulkhead counts its refusals in this process alone; summed over the processes when they share files.
        self.refusals = SummedRefusals() if directory else None
        self.requests = Counter(
            "lms_api_requests", "Requests answered", ["route", "method", "status"], registry=registry
        )
        self.request_seconds = Histogram(
            "lms_api_request_duration_seconds",
            "Time to answer a request",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.moodle_calls = Counter(
            "lms_api_moodle_calls", "Logical Moodle calls by outcome", ["function", "outcome"], registry=registry
        )
        self.moodle_seconds = Histogram(
            "lms_api_moodle_call_duration_seconds",
            "Time of a logical Moodle call, retries included",
            ["function"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.moodle_retries = Counter(
            "lms_api_moodle_retries", "Attempts after the first", ["function"], registry=registry
        )
        self.cache_answers = Counter(
            "lms_api_cache_answers",
            "Cached reads by how they were answered: hit, miss, collapsed, refresh or stale",
            ["group", "result"],
            registry=registry,
        )
        self.jobs = Counter(
            "lms_api_jobs",
            "Background jobs finished, by kind and final state",
            ["kind", "state"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "lms_api_job_duration_seconds",
            "Time a background job ran, from its start to its end",
            ["kind"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.events_published = Counter(
            "lms_api_events_published",
            "Events published to the streams, by type and outcome: sent, or failed (lost)",
            ["type", "outcome"],
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "lms_api_webhook_deliveries",
            "Moodle event deliveries to the webhook, by event (its name when the events table knows it, else other) "
            "and outcome: handled, ignored or duplicate",
            ["event", "outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "lms_api_rate_limit_refusals", "Requests refused over budget", ["budget"], registry=registry
        )

    def observe(self, request: Request, response: Response, seconds: float) -> None:
        route = request.matched_route.name if request.matched_route else "none"
        # waitress takes any token as a method: one of a caller's making would be a new series each time
        method = request.method if request.method in HTTP_METHODS else "other"
        self.requests.labels(route, method, str(response.status_code)).inc()
        self.request_seconds.labels(route, method).observe(seconds)
        calls: CallLog = request.moodle_calls
        self.observe_calls(calls)
        for outcome in calls.cache:
            self.cache_answers.labels(outcome.group, outcome.fetch.name.lower()).inc()
        budget = request.environ.get(REFUSED_BUDGET)
        if budget is not None:
            self.rate_limited.labels(budget).inc()
        if self.refusals is not None and calls.calls:  # the only requests whose calls the bulkhead may have refused
            self.refusals.catch_up(request.find_service(MoodleClient).bulkhead)

    def observe_calls(self, calls: CallLog) -> None:
        """The Moodle calls of a request, or of a background job."""
        for call in calls.calls:
            self.moodle_calls.labels(call.function, call.outcome).inc()
            self.moodle_seconds.labels(call.function).observe(call.ms / 1000)
            if call.attempts > 1:
                self.moodle_retries.labels(call.function).inc(call.attempts - 1)


class SummedRefusals:
    """The bulkhead's refusals, in this process's file: what it refused since last told is added after each request
    that called Moodle and before each scrape this process answers."""

    def __init__(self) -> None:
        self.counter = Counter("lms_api_moodle_bulkhead_refusals", REFUSALS_HELP, registry=None)
        self._lock = threading.Lock()
        self._told: tuple[Bulkhead | None, int] = (None, 0)

    def catch_up(self, bulkhead: Bulkhead) -> None:
        with self._lock:
            told_bulkhead, told = self._told
            refused = bulkhead.refused
            self.counter.inc(refused - told if bulkhead is told_bulkhead else refused)  # a test may swap the client
            self._told = (bulkhead, refused)


def write_values_to_files() -> None:
    """prometheus_client chose where every value lives when it was first imported: in the files of
    ``PROMETHEUS_MULTIPROC_DIR`` if it was set by then, else in memory. A gunicorn master imports it before the
    directory is set in its workers, which inherit its choice: the values made from now on go to this process's
    files, as they would had the directory been set first. Once in a process: two makers of files would each append
    to the same file unaware of the other."""
    if not values.ValueClass._multiprocess:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def empty_directory(directory: str) -> None:
    """The files of ``directory`` a previous run's processes wrote, which a scrape would otherwise add in."""
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def forget_process(pid: int, directory: str) -> None:
    """A process of the directory has ended: the gauges that count only live processes no longer read its file. Its
    counts stay, in the sums."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class _StateCollector:
    """What is true now, read when scraped: the jobs queued, the bulkhead, the breaker, the Redis fallback. All but
    the jobs (kept in Redis when several processes serve) are the answering process's."""

    def __init__(
        self,
        client: MoodleClient,
        cache: ReadCache,
        rate_counter: RateCounter,
        jobs: JobEngine,
        events: EventEngine,
        refusals_summed: bool,
    ) -> None:
        self._refusals_summed = refusals_summed
        self._jobs = jobs
        self._events = events
        self._client = client
        self._cache = cache
        self._rate_counter = rate_counter

    def collect(self) -> Iterator[Metric]:
        client = self._client
        with contextlib.suppress(ApiError):  # the jobs' Redis is away: the other metrics are told all the same
            yield GaugeMetricFamily(
                "lms_api_jobs_queued",
                "Background jobs waiting to start (on RQ: its queue's length)",
                value=self._jobs.queued(),
            )
        yield from self._jobs.shared_metrics()
        yield GaugeMetricFamily(
            "lms_api_event_streams_open",
            "Event streams the answering process serves itself (none when nginx with nchan holds them)",
            value=self._events.open_streams(),
        )
        yield GaugeMetricFamily(
            "lms_api_moodle_calls_in_flight",
            "Moodle calls holding a slot of the answering process's bulkhead",
            value=client.bulkhead.in_use,
        )
        yield GaugeMetricFamily(
            "lms_api_moodle_concurrency_limit",
            "MOODLE_MAX_CONCURRENCY: the slots of each process's bulkhead",
            value=client.bulkhead.limit,
        )
        if not self._refusals_summed:
            yield CounterMetricFamily("lms_api_moodle_bulkhead_refusals", REFUSALS_HELP, value=client.bulkhead.refused)
        yield GaugeMetricFamily(
            "lms_api_moodle_breaker_state",
            "The answering process's circuit breaker: 0 closed, 1 half-open, 2 open",
            value=BREAKER_STATES[client.breaker.state],
        )
        fallback = GaugeMetricFamily(
            "lms_api_redis_fallback",
            "1 while Redis does not answer and the answering process uses its own state",
            labels=["use"],
        )
        if isinstance(self._cache.store, RedisStore):
            fallback.add_metric(["cache"], float(self._cache.store.link.down))
        if isinstance(self._rate_counter, RedisCounter):
            fallback.add_metric(["ratelimit"], float(self._rate_counter.link.down))
        yield fallback


def metrics_view(request: Request) -> Response:
    if not is_operator(request):
        raise HTTPNotFound()  # not advertised: the same answer as a path that does not exist
    metrics: GatewayMetrics = request.registry.metrics
    # The services this request finds, as a view would: the ones serving now (a test may have swapped the client).
    client: MoodleClient = request.find_service(MoodleClient)
    if metrics.refusals is not None:
        metrics.refusals.catch_up(client.bulkhead)
    state = _StateCollector(
        client,
        request.find_service(ReadCache),
        request.registry.rate_counter,
        request.registry.jobs,
        request.registry.events,
        refusals_summed=metrics.refusals is not None,
    )
    scrape = CollectorRegistry()
    scrape.register(metrics.registry)
    scrape.register(state)
    return Response(body=generate_latest(scrape), content_type=CONTENT_TYPE_LATEST.split(";")[0],
                    charset="utf-8")  # fmt: skip


def metrics_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    metrics: GatewayMetrics = registry.metrics

    def tween(request: Request) -> Response:
        started = time.perf_counter()
        response = handler(request)
        metrics.observe(request, response, time.perf_counter() - started)
        return response

    return tween


def includeme(config: Configurator) -> None:
    config.registry.metrics = GatewayMetrics()
    config.add_route("metrics", METRICS_PATH)
    config.add_view(metrics_view, route_name="metrics", request_method="GET", permission=NO_PERMISSION_REQUIRED)
    config.add_tween(
        "lms_api.metrics.metrics_tween_factory",
        over="lms_api.hygiene.hygiene_tween_factory",  # around the rate limits, so their refusals are counted
        under="lms_api.logging.request_tween_factory",
    )
