"""gunicorn's settings and hooks for the gateway, which gunicorn reads by name: from ``gunicorn.conf.py`` when started
at the repository root, or with ``-c python:lms_api.gunicorn`` from anywhere the package is installed. The command line
wins over the settings.

``gunicorn --paste production.ini -k gthread -w <cores> --threads 16`` serves the ini's app from a process per core,
each with its threads, where ``pserve`` serves it from one (:mod:`lms_api.server`), bound by the GIL to about one core.
What the waitress runner does for its one process is done here for each worker: the start refused, in the master and
before any worker serves, on settings the workers could not serve with; the app's objects kept out of the collector's
passes; the event streams the gateway serves itself told when their client has gone, and ended at SIGTERM; the
embedded job engine stopped with the worker. Logging needs nothing of its own: a worker leaves through ``sys.exit``,
and ``logging.shutdown`` at exit writes the lines still queued. With more than one worker, the metrics each counts
are written to a directory they share, so that ``/metrics``, answered by one of them, tells the sums over all
(:mod:`lms_api.metrics`).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, Protocol

import structlog

from lms_api.events.embedded import CLIENT_GONE
from lms_api.metrics import MULTIPROCESS_DIRECTORY, empty_directory, forget_process
from lms_api.server import (
    DEFAULT_THREADS,
    REDIS_CLIENTS,
    RaisedLimit,
    check_stream_threads,
    fit_open_files_limit,
    open_files_needed,
)
from lms_api.settings import Settings, SettingsError, load_settings, read_dotenv

log = structlog.get_logger("lms_api.gunicorn")

worker_class = "gthread"
# gunicorn --paste reads no [server:main], where pserve finds its threads.
threads = DEFAULT_THREADS
# Idle connections are kept as long as waitress keeps them (120 s): nginx keeps its own to the gateway for 60 s
# (deploy/nginx), and one the gateway closed first could carry nginx's next request, lost (gunicorn's default: 2 s).
keepalive = 120
# X-Forwarded-* are left to lms_api.caller (TRUSTED_PROXIES), as waitress leaves them: gunicorn would otherwise take
# the scheme from X-Forwarded-Proto sent from 127.0.0.1.
secure_scheme_headers: dict[str, str] = {}


class GunicornSettings(Protocol):
    """What the hooks read of gunicorn's ``Config``, as the command line and ``gunicorn.conf.py`` left it."""

    paste: str | None
    paste_global_conf: dict[str, str] | None
    workers: int
    threads: int
    worker_connections: int
    preload_app: bool


class Arbiter(Protocol):
    """gunicorn's master process."""

    cfg: GunicornSettings
    worker_class: type
    pidfile: Any  # gunicorn's Pidfile, or None
    log: Any  # gunicorn's own logger (the app's is set up in each worker)


class Worker(Protocol):
    """A gunicorn worker process (a gthread ``ThreadWorker``, which :func:`on_starting` made sure of)."""

    pid: int
    alive: bool
    wsgi: Any  # the app it loaded
    method_queue: Any  # runs a callable on the worker's main loop

    def handle_exit(self, signum: int, frame: Any) -> None: ...


def on_starting(arbiter: Arbiter) -> None:
    """In the master, before it listens or starts a worker: exit status 2 with one line on stderr when the workers
    could not serve as the ini, ``.env`` and the environment say, rather than each worker failing on its own (which
    gunicorn would start again, and again)."""
    try:
        raised = check_start(arbiter.cfg, arbiter.worker_class, settings_for(arbiter.cfg))
    except SystemExit:
        if arbiter.pidfile is not None:
            arbiter.pidfile.unlink()
        raise
    if raised:
        arbiter.log.info("lms_api: soft limit on open files raised from %s to %s", raised.before, raised.after)


@dataclass(frozen=True)
class SharedMetrics:
    """The directory the workers of this master write their metrics to."""

    directory: str
    private: bool  # made by the master, and removed when it exits; the operator's own is left


# The master's, chosen when it is ready, before its first worker: read by the hooks run for each worker since.
shared_metrics: SharedMetrics | None = None


def when_ready(arbiter: Arbiter) -> None:
    """In the master, listening, before it starts any worker: the directory the workers write their metrics to, which
    a scrape sums. The operator's ``PROMETHEUS_MULTIPROC_DIR`` when set (with one worker too, whose app reads it),
    emptied of a previous run's files; else, with more than one worker, a private one of the master's. Exit status 2
    with one line when the operator's cannot be used."""
    # Not at on_starting: a start that then failed to listen would leave its private directory behind (no on_exit).
    global shared_metrics
    given = os.environ.get(MULTIPROCESS_DIRECTORY)
    if given:
        try:
            os.makedirs(given, exist_ok=True)
            empty_directory(given)
        except OSError as error:
            if arbiter.pidfile is not None:
                arbiter.pidfile.unlink()
            refuse(f"{MULTIPROCESS_DIRECTORY}={given} cannot hold the workers' metrics: {error.strerror}")
        shared_metrics = SharedMetrics(given, private=False)
    elif arbiter.cfg.workers > 1:
        shared_metrics = SharedMetrics(tempfile.mkdtemp(prefix="lms_api-metrics-"), private=True)
    else:
        return
    arbiter.log.info("lms_api: the workers' metrics are summed from %s", shared_metrics.directory)


def post_fork(arbiter: Arbiter, worker: Worker) -> None:
    """In each worker, before it loads the app, which then writes its metrics to the master's directory."""
    if shared_metrics is not None:
        os.environ[MULTIPROCESS_DIRECTORY] = shared_metrics.directory


def child_exit(arbiter: Arbiter, worker: Worker) -> None:
    """In the master, for a worker that has ended: what it counted stays in the sums."""
    if shared_metrics is not None:
        forget_process(worker.pid, shared_metrics.directory)


def on_exit(arbiter: Arbiter) -> None:
    """In the master, its workers gone: its private directory of metrics goes with it."""
    if shared_metrics is not None and shared_metrics.private:
        shutil.rmtree(shared_metrics.directory, ignore_errors=True)


def settings_for(cfg: GunicornSettings) -> Settings:
    """The settings the app of ``--paste`` will read: from the environment, the ``.env`` beside the ini and the ini's
    app section, as :func:`lms_api.main` reads them. Exit status 2 with a line per problem when they are not valid."""
    if not cfg.paste:
        refuse("run the gateway as gunicorn --paste production.ini (or development.ini): the app is built from the ini")
    from paste.deploy import appconfig  # PasteDeploy's, which pserve and gunicorn --paste read the ini with

    path = os.path.abspath(cfg.paste)
    ini = appconfig(f"config:{path}", relative_to=os.getcwd(), global_conf=cfg.paste_global_conf)
    try:
        return load_settings(ini.local_conf, os.environ, read_dotenv(ini.global_conf.get("here")))
    except SettingsError as error:
        for problem in error.problems:
            print(f"lms_api: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def check_start(cfg: GunicornSettings, worker_class: type, settings: Settings) -> RaisedLimit | None:
    """Exit status 2 with one line when the workers ``cfg`` describes could not serve with ``settings``: not
    gthread; several without Redis to share what each would keep to itself; too few threads for the event streams;
    too low a hard limit on open files. The soft limit on open files is raised here, for every worker to inherit:
    how, when it was."""
    from gunicorn.workers.gthread import ThreadWorker

    if not issubclass(worker_class, ThreadWorker):
        refuse(
            f"gunicorn serves the gateway with its gthread workers (-k gthread), not {worker_class.__name__}: a "
            "worker's threads serve its requests"
        )
    if cfg.workers > 1 and not settings.redis_url:
        refuse(
            f"{cfg.workers} workers without REDIS_URL would each keep their own rate budgets, read cache, idempotency "
            "keys, event tickets and jobs: set REDIS_URL, or run one worker (-w 1)"
        )
    if cfg.workers > 1 and cfg.preload_app:
        refuse(
            f"{cfg.workers} workers from an app preloaded in the master (--preload) would share its metrics in "
            "memory, each counting alone: leave --preload out"
        )
    if cfg.workers > 1 and settings.jobs_engine == "embedded":
        refuse(
            f"{cfg.workers} workers with JOBS_ENGINE=embedded would each keep their own jobs, which could not be read "
            "or cancelled through another: use JOBS_ENGINE=rq, or run one worker (-w 1)"
        )
    check_stream_threads(cfg.threads, settings)
    redis_clients = REDIS_CLIENTS if settings.redis_url else 0
    counted = "worker_connections, threads" + (" and their Redis connections (REDIS_URL)" if redis_clients else "")
    needed = open_files_needed(cfg.worker_connections, cfg.threads, redis_clients)
    return fit_open_files_limit(needed, counted, lower="worker_connections")


def refuse(reason: str) -> NoReturn:
    print(f"lms_api: {reason}", file=sys.stderr)
    raise SystemExit(2)


def post_worker_init(worker: Worker) -> None:
    """In each worker, its app loaded and before it serves."""
    # What is built by now lives as long as the worker. Frozen, it is no longer walked by the collector's full passes,
    # which the many objects of a large Moodle answer set off often, each holding up the request it is in.
    gc.collect()
    gc.freeze()
    worker.wsgi = ToldWhenClientLeaves(worker.wsgi)
    end_streams_when_told_to_stop(worker, worker.wsgi)


class ToldWhenClientLeaves:
    """The app, with a way for a request to learn that its client has closed the connection: an idle event stream the
    gateway serves asks every second (:mod:`lms_api.events.embedded`), so that a page reloaded frees its stream's slot
    at once rather than at the stream's next heartbeat. It asks under waitress's name for it, which serves the same
    purpose there."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.registry = app.registry

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        client = environ.get("gunicorn.socket")
        if isinstance(client, socket.socket) and not isinstance(client, ssl.SSLSocket):  # TLS reads no bytes unread
            environ[CLIENT_GONE] = partial(client_gone, client)
        answer: Iterable[bytes] = self.app(environ, start_response)
        return answer


def client_gone(client: socket.socket) -> bool:
    """Whether the peer closed ``client`` or reset it: the bytes it may have sent meanwhile are left to be read."""
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # nothing to read: still there
        return False
    except OSError:
        return True


def end_streams_when_told_to_stop(worker: Worker, app: Any) -> None:
    """At SIGTERM (gunicorn's master passes it on), the event streams the gateway serves end first: each holds a
    thread and its connection, which the worker would otherwise wait out for its whole ``graceful_timeout``."""
    stop = worker.handle_exit  # gthread's own: stop accepting, finish the requests in flight

    def told_to_stop(signum: int, frame: Any) -> None:
        first = worker.alive
        stop(signum, frame)
        if first:  # closed on the worker's main loop, not in this handler, which may have interrupted a lock's holder
            worker.method_queue.defer(close_streams, app)

    signal.signal(signal.SIGTERM, told_to_stop)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: requests in flight are not disturbed


def close_streams(app: Any) -> None:
    log.info("server.shutting_down", streams=app.registry.events.open_streams())
    app.registry.events.close()


def pre_request(worker: Worker, request: Any) -> None:
    """Each log line of a request names the worker process that served it."""
    structlog.contextvars.bind_contextvars(pid=worker.pid)


def worker_exit(arbiter: Arbiter, worker: Worker) -> None:
    """In a worker once it has served its last request: the events stop listening to Redis (closed again, for a
    worker that had no connection left to run its main loop once more when told to stop), and the embedded job engine
    cancels its queued jobs and waits for the running ones. Also called in the master for a worker already gone,
    which has no app there."""
    app = _app(worker)
    if app is None:
        return
    app.registry.events.close()
    app.registry.jobs.close()
    log.info("server.stopped")


def _app(worker: Worker) -> Any:
    """The Pyramid app the worker loaded (gunicorn's ``wsgi``); None where it has none."""
    return getattr(worker, "wsgi", None)
