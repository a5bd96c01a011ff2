"""The PasteDeploy server factory: waitress, on the port given as ``pserve ... http_port=N``."""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import waitress
from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from lms_api.bodysizes import largest_body
from lms_api.settings import Settings

if TYPE_CHECKING:  # the server loads nothing of the app's
    from lms_api.jobs import JobEngine

DEFAULT_PORT = 6543
LISTEN_BACKLOG = 1024  # waitress's own default
# Descriptors a process needs besides one per connection and one per thread (its keep-alive connection to Moodle):
# the listener, waitress's wake-up pipe, stdio, bodies and answers spooled to temporary files.
SPARE_FILES = 64
# With REDIS_URL, the Redis clients of one process, each with its own pool, in which every thread busy with Redis
# holds a connection: rate limits (lms_api/ratelimit.py), the read cache (lms_api/cache/), the owners of draft
# items (lms_api/drafts.py), idempotency keys (lms_api/idempotency.py), background jobs on RQ (lms_api/jobqueue.py,
# the job engine with REDIS_URL unless JOBS_ENGINE=embedded), event stream tickets (lms_api/events/tickets.py), the
# events the gateway serves itself (lms_api/events/embedded.py, whose listener holds one more connection, a spare) and
# Moodle's webhook deliveries done (lms_api/webhooks.py, with WEBHOOK_SECRET).
# Keep it the number of redis_client() calls an app makes.
REDIS_CLIENTS = 8
# Threads left for other requests while every event stream the gateway serves itself holds one (EVENTS_MAX_STREAMS):
# /healthz, /readyz, /metrics and a few reads, however many streams are open.
THREADS_BESIDES_STREAMS = 5
# waitress's own default (4) would not start with EVENTS_MAX_STREAMS' default (8): 8 streams, and 8 for the rest.
DEFAULT_THREADS = 16

log = structlog.get_logger("lms_api.server")


@dataclass(frozen=True)
class RaisedLimit:
    """The soft limit on open files, before and after it was raised."""

    before: int
    after: int


def server_factory(
    global_conf: dict[str, Any], host: str = "127.0.0.1", threads: str = str(DEFAULT_THREADS), **options: Any
) -> Callable[[Any], None]:
    """Serve with waitress. ``http_port`` comes from the pserve command line (``http_port=8080``), else 6543.

    The port is read here rather than interpolated in the ini: a ``[DEFAULT] http_port`` would silently
    win over the command line. The socket is bound here too, before the app is built, so a port in use is
    one line and exit status 2, not a traceback after a started sandbox; so is a hard limit on open files too
    low for ``connection_limit`` (checked again once the app's settings say whether Redis is used). Once they are
    read, too few threads for the event streams the gateway serves itself stop the start in the same way.
    """
    port = int(global_conf.get("http_port") or DEFAULT_PORT)
    thread_count = int(threads)
    connection_limit = int(options.get("connection_limit") or Adjustments.connection_limit)
    raised = fit_open_files_limit(open_files_needed(connection_limit, thread_count), "connection_limit and threads")
    listener = listen(host, port)
    # X-Forwarded-* reach the app as the client sent them: lms_api.caller believes them from TRUSTED_PROXIES only.
    # waitress would otherwise clear them (no trusted_proxy here), and with them what a trusted nginx forwarded.
    options["clear_untrusted_proxy_headers"] = False
    options["ident"] = ""  # no Server header naming waitress on any answer
    # waitress keeps reading a connection while its request runs, so an event stream the gateway serves learns that its
    # client has gone (waitress.client_disconnected) within a second, not at its next write, and frees its slot.
    options.setdefault("channel_request_lookahead", 1)

    def serve(app: Any) -> None:
        settings: Settings = app.registry.settings["lms_api.settings"]
        # waitress spools a whole body before the app sees it: refuse bodies no route would accept, unread.
        options.setdefault("max_request_body_size", largest_body(settings))
        redis_clients = REDIS_CLIENTS if settings.redis_url else 0
        needed = open_files_needed(connection_limit, thread_count, redis_clients)
        fitted = raised
        try:
            check_stream_threads(thread_count, settings)
            if redis_clients:
                counted = "connection_limit, threads and their Redis connections (REDIS_URL)"
                fitted = fit_open_files_limit(needed, counted) or raised
        except SystemExit:
            # pserve makes exit status 0 of a SystemExit raised once the app is built: leave with this one, the
            # line written first (it went to the log, which now holds stderr).
            logging.shutdown()
            os._exit(2)
        if fitted:
            log.info("server.open_files_raised", soft_before=fitted.before, soft=fitted.after, needed=needed)
        # What is built by now lives as long as the process. Frozen, it is no longer walked by the collector's full
        # passes, which the many objects of a large Moodle answer set off often, each holding up the request it is in.
        gc.collect()
        gc.freeze()
        # Told to stop, the event streams the gateway serves end first: each holds a thread, which waitress's grace
        # for the requests in flight would otherwise wait out (the engine is looked up then, not now).
        dispatcher = AnnouncingDispatcher(before_shutdown=lambda: app.registry.events.close())
        dispatcher.set_thread_count(thread_count)
        # waitress's own dispatcher, but one that says when it is told to stop. create_server's ``_dispatcher`` is
        # the shim waitress's own tests use (its source says "test shim"), not a documented option, and the one way to
        # hand it a dispatcher: requirements.txt keeps waitress below 4, and tests/integration/test_server_limits.py
        # fails should a waitress ignore or refuse it (no server.shutting_down).
        server = waitress.create_server(
            app, _dispatcher=dispatcher, sockets=[listener], threads=thread_count, **options
        )
        server.print_listen("Serving on http://{}:{}")
        signal.signal(signal.SIGTERM, _stop_serving)
        try:
            server.run()  # returns on Ctrl-C or SIGTERM, once the dispatcher has shut down
        finally:  # a SIGTERM now would cut short the writing of the last log lines
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("server.stopped", in_flight=dispatcher.in_flight())
        jobs: JobEngine = app.registry.jobs
        jobs.close()

    return serve


class AnnouncingDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]  # waitress ships no type information
    """waitress's thread pool, counting the requests it was handed and has not finished, and logging
    ``server.shutting_down`` when told to stop, before it waits for them: a log line from the signal handler itself
    could wait forever on a lock the interrupted thread holds.

    The requests are counted here because waitress' own ``active_count`` also counts each thread from its start until
    it first waits for work, which on a loaded host shortly after start is most of them."""

    def __init__(self, before_shutdown: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._in_flight = 0
        self._counting = threading.Lock()
        self._before_shutdown = before_shutdown

    def add_task(self, task: Any) -> None:
        """``task`` is a connection with a request read: served by a thread, or cancelled at shutdown."""
        self._count(1)
        super().add_task(_Counted(task, self._count))

    def in_flight(self) -> int:
        """Requests being served, and those read and waiting for a thread."""
        with self._counting:
            return self._in_flight

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        log.info("server.shutting_down", in_flight=self.in_flight(), wait_s=timeout)
        self._before_shutdown()
        return bool(super().shutdown(cancel_pending, timeout))

    def _count(self, change: int) -> None:
        with self._counting:
            self._in_flight += change


class _Counted:
    """A task that tells the dispatcher when it is done with, served or cancelled."""

    def __init__(self, task: Any, count: Callable[[int], None]) -> None:
        self._task = task
        self._count = count

    def service(self) -> None:
        try:
            self._task.service()
        finally:
            self._count(-1)

    def cancel(self) -> None:
        try:
            self._task.cancel()
        finally:
            self._count(-1)

    def __repr__(self) -> str:  # what waitress logs of a task that failed
        return repr(self._task)


def _stop_serving(signum: int, frame: Any) -> None:
    """SIGTERM, what orchestrators and ``kill`` send, ends the serve loop as Ctrl-C does: waitress gives the requests
    in progress up to 5 s to finish, and the process then exits through ``logging.shutdown``, which writes the log
    lines still queued. A second SIGTERM is ignored, so it cannot cut that short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


def open_files_needed(connection_limit: int, threads: int, redis_clients: int = 0) -> int:
    """One descriptor per connection; per thread, its connection to Moodle and one to each Redis client."""
    return connection_limit + threads * (1 + redis_clients) + SPARE_FILES


def fit_open_files_limit(needed: int, counted: str, lower: str = "connection_limit") -> RaisedLimit | None:
    """Raise the soft limit on open files (``ulimit -n``) to the hard one whenever it is below it: past the soft
    limit, new connections would be refused by accept() while waitress still counts room for them, and ``needed``
    is a count of what is known, not a bound on every file a request may open. Without a hard limit, to ``needed``.
    Exit status 2 with one line naming both numbers, what ``counted`` and the setting to ``lower`` when the hard
    limit (``ulimit -Hn``) is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        print(
            f"lms_api: {counted} need {needed} open files, but the hard limit is {hard} (ulimit -Hn): raise it, "
            f"or lower {lower}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    target = needed if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return RaisedLimit(before=soft, after=target)


def check_stream_threads(threads: int, settings: Settings) -> None:
    """Without ``NCHAN_PUBLISH_URL`` the gateway serves event streams itself, each holding a waitress thread for as
    long as it is open: exit status 2 with one line saying so when ``threads`` leaves fewer than
    :data:`THREADS_BESIDES_STREAMS` for everything else with ``EVENTS_MAX_STREAMS`` streams open."""
    if settings.nchan_publish_url:
        return  # nginx holds the streams
    least = settings.events_max_streams + THREADS_BESIDES_STREAMS
    if threads < least:
        print(
            f"lms_api: threads = {threads} is too few for {settings.events_max_streams} event streams "
            f"(EVENTS_MAX_STREAMS), each holding a thread, and the requests besides them: set threads to at least "
            f"{least}, lower EVENTS_MAX_STREAMS, or let nginx with nchan hold the streams (NCHAN_PUBLISH_URL)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; exit status 2 with one line naming them when that fails."""
    listener = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        if listener is not None:
            listener.close()
        reason = "the port is already in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        print(f"lms_api: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None
    return listener
