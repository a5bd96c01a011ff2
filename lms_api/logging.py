"""structlog set-up, request ids, and the one summary line per request."""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import logging
import logging.handlers
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from queue import Empty, Full, SimpleQueue
from typing import Any, TextIO

import orjson
import structlog
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW
from structlog.typing import EventDict

from lms_api.calllog import CallLog
from lms_api.moodle.errors import redact
from lms_api.security import checked_identity
from lms_api.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
FLUSH_TIMEOUT_S = 5.0  # how long flush() and close() wait for the writer thread
MAX_QUEUED_LINES = 10_000
ROOM_POLL_S = 0.001  # how often a caller waiting for room in a full queue looks again
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
SUMMARY_LOGGER = "lms_api.request"

log = structlog.get_logger(SUMMARY_LOGGER)
_summary_logger = logging.getLogger(SUMMARY_LOGGER)


# Scrubbed from every rendered line as a last line of defence: nothing should log them in the first place. One list
# for the whole process, since logging is: it grows as secrets become known (a sandbox's token once it started). It
# is replaced, never changed in place, as lines are rendered on the writer thread while it grows. Each secret is
# there as the renderers may write it (JSON escapes quotes, backslashes and non-ASCII; the console renderer shows
# values in a list by repr), longest first, so a secret inside another never leaves a piece of the longer one.
_SECRETS: tuple[str, ...] = ()


def scrub_from_logs(*secrets: str | None) -> None:
    global _SECRETS
    forms = {form for secret in secrets if secret for form in _written_forms(secret)}
    _SECRETS = tuple(sorted(forms.union(_SECRETS), key=len, reverse=True))


def _written_forms(secret: str) -> set[str]:
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1]}


class _FlushRequest(logging.LogRecord):
    """Not a line: the writer answers it once every line queued before it is written."""

    def __init__(self) -> None:
        super().__init__(__name__, logging.NOTSET, __file__, 0, "flush", None, None)
        self.written = threading.Event()


# structlog's events, rendered on the writer; lines rendered already, as text; None: the writer's stop
_Queued = SimpleQueue[logging.LogRecord | str | None]


class GatewayLogHandler(logging.handlers.QueueHandler):
    """The gateway's own handler on the root logger: a request thread only queues its event; rendering it, and
    writing to stderr (a system call, which lets go of the GIL and then waits for it again), happen on the writer
    thread (:class:`LogWriter`), a batch of lines per write. With many callers, request threads no longer queue on a
    lock held across a write. The request's summary line comes rendered already (:func:`log_summary`), as text.

    ``flush()`` returns once every line queued before it is written, and ``close()`` (run by ``logging.shutdown`` at
    exit, which the waitress runner also reaches on SIGTERM) writes the rest first; each waits ``FLUSH_TIMEOUT_S`` at
    most. A line logged by the writer itself is written at once, and one logged once the writer has stopped is
    written by the thread that logged it.
    """

    queue: _Queued

    def __init__(self, stream: TextIO, log_format: str = "json") -> None:
        # A SimpleQueue: its put is reentrant, so a signal handler that logs (RQ's on SIGTERM) while this thread was
        # queueing a line does not wait on a lock its own thread holds, for ever. Bounded by put_when_room.
        super().__init__(SimpleQueue())
        self.stream = stream
        self.log_format = log_format
        self.setFormatter(log_formatter(log_format))
        self._closed = False
        self.listener = LogWriter(self)
        self.listener.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # Without the handler's lock around emit: the queue is safe between threads, and a caller holding the lock
        # while it waits for room in a full queue would keep out the writer, should the writer itself log.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self._pass_on(record)

    def emit_rendered(self, line: str) -> None:
        """Write ``line``, rendered and scrubbed already (the request's summary line), as an event is written."""
        self._pass_on(line)

    def _pass_on(self, record: logging.LogRecord | str) -> None:
        if self.listener.is_current_thread():  # the writer logging: written now, not queued behind itself
            self.write(self.render(record))
        elif self.listener.stopped.is_set():  # closed: written by the caller, one at a time
            self._write_leftovers(record)
        else:
            # waits for room, where QueueHandler's own put_nowait would drop the line
            self.put_when_room(self._as_queued(record))
            if self._closed and self.listener.stopped.is_set():  # queued behind the writer's stop: nobody else will
                self._write_leftovers()

    def _as_queued(self, record: logging.LogRecord | str) -> logging.LogRecord | str:
        """structlog's event as it is: its request id, and its traceback as text, are in it already, and it is
        rendered on the writer. Another library's line is rendered now, while this thread's request id is bound; a
        line rendered already is queued as its text."""
        return record if isinstance(record, str) or hasattr(record, "_logger") else self.render(record)

    def put_when_room(self, record: logging.LogRecord | str | None, timeout: float | None = None) -> bool:
        """Queue ``record`` once fewer than ``MAX_QUEUED_LINES`` wait, so that when stderr is read slower than lines
        come, callers wait for the writer rather than memory grow: whether it was queued within ``timeout``. It
        polls, as any lock or condition it held could be wanted again by a signal handler logging on this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.queue.qsize() >= MAX_QUEUED_LINES:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(ROOM_POLL_S)
        self.queue.put(record)
        return True

    def flush(self) -> None:
        flushed = _FlushRequest()
        if self._hand_to_writer(flushed):
            flushed.written.wait(FLUSH_TIMEOUT_S)

    def close(self) -> None:
        self._closed = True
        if self._writer_reachable():
            with contextlib.suppress(Full):  # the writer is stuck on a stalled stderr
                self.listener.stop()
        if self.listener.stopped.is_set():  # else it is stuck on a stalled stderr, and so would this thread be
            self._write_leftovers()
        super().close()

    def render(self, record: logging.LogRecord | str) -> str:
        if isinstance(record, str):
            return record
        try:
            return self.format(record) + "\n"
        except Exception as error:
            # Said in a line of its own, not by handleError: that prints to stderr, which pserve's lines turned
            # into a logger, and the writer would be logging into its own queue.
            failure = {"event": "log.unrenderable", "logger": record.name, "error": type(error).__name__}
            return json.dumps({**failure, "level": "error"}) + "\n"

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: S110  # stderr is closed, broken or gone: there is nowhere left to say so
            pass

    def _write_leftovers(self, *records: logging.LogRecord | str) -> None:
        """Write, on this thread, what the stopped writer left in the queue, then ``records``."""
        self.acquire()
        try:
            for record in [*self._queued(), *records]:
                self.listener.handle(record)
            self.listener.write_lines()
        finally:
            self.release()

    def _queued(self) -> Iterator[logging.LogRecord | str]:
        """What is in the queue now, without waiting for more; the writer's stop left out."""
        while True:
            try:
                record = self.queue.get_nowait()
            except Empty:
                return
            if record is not LogWriter._sentinel:
                yield record

    def _writer_reachable(self) -> bool:
        return not (self.listener.stopped.is_set() or self.listener.is_current_thread())

    def _hand_to_writer(self, record: logging.LogRecord) -> bool:
        if not self._writer_reachable():
            return False
        return self.put_when_room(record, FLUSH_TIMEOUT_S)  # else the writer is stuck on a stalled stderr


class LogWriter(logging.handlers.QueueListener):
    """The writer thread of a :class:`GatewayLogHandler`: renders the events it takes from the queue and writes
    them, the lines taken while a write was held going out together in the next one."""

    queue: _Queued
    _sentinel = None  # the stop, as QueueListener puts it and looks for it
    _BATCH = 512  # lines per write at most, so one flush is never held behind an endless stream

    def __init__(self, handler: GatewayLogHandler) -> None:
        super().__init__(handler.queue)
        self._handler = handler
        self._lines: list[str] = []
        self._thread_seen: threading.Thread | None = None
        self.stopped = threading.Event()  # set once the stop is taken and every line before it written

    def is_current_thread(self) -> bool:
        return threading.current_thread() is self._thread_seen

    # typeshed says a LogRecord, though QueueListener takes its stop, None, and lines rendered already through it too
    def dequeue(self, block: bool) -> logging.LogRecord | str | None:  # type: ignore[override]
        self._thread_seen = threading.current_thread()
        try:
            record = self.queue.get_nowait()
        except Empty:
            self.write_lines()  # nothing more is waiting: what was taken goes out in one write
            record = self.queue.get(block)
        if record is self._sentinel:
            self.write_lines()
            self.stopped.set()
        return record

    def handle(self, record: logging.LogRecord | str) -> None:
        if isinstance(record, _FlushRequest):
            self.write_lines()
            record.written.set()
            return
        self._lines.append(self._handler.render(record))
        if len(self._lines) >= self._BATCH:
            self.write_lines()

    def write_lines(self) -> None:
        if self._lines:
            self._handler.write("".join(self._lines))
            self._lines = []

    def enqueue_sentinel(self) -> None:
        if not self._handler.put_when_room(self._sentinel, FLUSH_TIMEOUT_S):
            raise Full  # the writer is stuck on a stalled stderr

    def stop(self) -> None:
        """Write what is queued and end the thread, waiting ``FLUSH_TIMEOUT_S`` at most (QueueListener's own waits
        for ever, and a stalled stderr would hold the process at exit)."""
        self.enqueue_sentinel()
        self.stopped.wait(FLUSH_TIMEOUT_S)


def configure_logging(log_format: str, secrets: Iterable[str]) -> None:
    """Route structlog and stdlib logs (waitress included) through one renderer on stderr.

    Called again (another app in the same process), it replaces only its own handler: what a host or a test put
    on the root logger stays.
    """
    scrub_from_logs(*secrets)
    structlog.configure(
        # A traceback is made text here, on the thread that caught it: the writer thread renders the rest later.
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    replaced = [handler for handler in root.handlers if isinstance(handler, GatewayLogHandler)]
    # The real stderr, not what pserve's lines go through once a first app has replaced it (that would log each
    # line again as an event of its own).
    stderr = sys.stderr._fallback if isinstance(sys.stderr, LinesAsLog) else sys.stderr
    handler = GatewayLogHandler(stderr, log_format)
    root.addHandler(handler)  # before the old one goes: no moment without a handler, when logging's last resort
    root.setLevel(logging.INFO)  # would print unscrubbed lines
    for old in replaced:
        root.removeHandler(old)
        old.close()


def drop_pserve_log_handler() -> None:
    """pserve put ``logging.basicConfig()``'s plain handler on the root logger (the ini has no ``[loggers]``); the
    gateway renders every line itself, so that one goes."""
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if not isinstance(handler, GatewayLogHandler)]:
        root.removeHandler(handler)


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def log_formatter(log_format: str) -> logging.Formatter:
    """One line per event, JSON or for people, secrets scrubbed."""
    # The console's in call order, so a request line reads status, method, path, ms and sub first.
    renderer = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False) if log_format == "console" else _json_line
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            _scrub,
        ],
    )


def _scrub(_logger: Any, _name: str, line: Any) -> str:
    # Last in the chain: the renderer before it has already made the event one line of text.
    return redact(line, _SECRETS)


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is safe to echo, else a new one: 32 hex digits, as a uuid4's were."""
    incoming: str = request.headers.get(REQUEST_ID_HEADER, "")
    if _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    # A count after a random prefix drawn once per process, rather than a uuid4 per request: drawing random bytes is a
    # system call, which lets go of the GIL. next() on a count is one step that no other thread can split.
    return f"{_request_id_prefix}{next(_request_numbers):012x}"


def _draw_request_id_prefix() -> None:
    """80 random bits: no two processes, and no process forked from another, count after the same prefix."""
    global _request_id_prefix, _request_numbers
    _request_id_prefix = secrets.token_hex(10)
    _request_numbers = itertools.count()


_request_id_prefix: str
_request_numbers: itertools.count[int]
_draw_request_id_prefix()
os.register_at_fork(after_in_child=_draw_request_id_prefix)  # a worker forked by a server draws a prefix of its own


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    configure_logging(settings.log_format, settings.secrets)
    config.add_request_method(request_id, "id", reify=True)
    config.add_tween(
        "lms_api.logging.request_tween_factory", over=EXCVIEW, under="lms_api.hygiene.encoding_tween_factory"
    )


def request_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """Bind the request id to every log line, echo it, and log one summary line per request.

    Placed over EXCVIEW, so error responses rendered by exception views pass through here too.
    """

    def tween(request: Request) -> Response:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request.id):
            response = handler(request)
            response.headers[REQUEST_ID_HEADER] = request.id
            identity = checked_identity(request)
            calls: CallLog = request.moodle_calls
            log_summary(
                status=response.status_code,
                method=request.method,
                path=request.path,
                ms=round((time.perf_counter() - started) * 1000, 1),
                sub=identity.sub if identity else None,
                route=request.matched_route.name if request.matched_route else None,
                moodle_functions=calls.functions,
                moodle_ms=calls.ms,
                retries=calls.retries,
                cache=response.headers.get("Cache-Status"),
            )
        return response

    return tween


def log_summary(**fields: Any) -> None:
    """Log the request's summary line, ``fields`` first, then what structlog adds to every line.

    Where the gateway's handler renders JSON and is the only one the line would reach (as under pserve), the line is
    rendered here with orjson and handed to the writer as text: the one line of every request skips structlog's
    processors and logging's record, and the writer only writes it. Anywhere else (console logs, a host's or a test's
    handler on the root logger) it is logged like any other line.
    """
    handler = _json_handler_alone()
    if handler is None:
        log.info("request", **fields)
        return
    event = {**fields, "event": "request"}
    structlog.contextvars.merge_contextvars(None, "info", event)  # the request id, and what else is bound
    event["level"] = "info"
    event["logger"] = SUMMARY_LOGGER
    event["timestamp"] = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")  # as TimeStamper
    try:
        line = _json_line(None, "info", event)
    except Exception:  # what neither JSON writer takes (a tuple key, a loop): said as any line that cannot be
        log.info("request", **fields)
        return
    handler.emit_rendered(redact(line, _SECRETS) + "\n")


def _json_handler_alone() -> GatewayLogHandler | None:
    """The gateway's handler, when it renders JSON and is the only one an info line of the summary logger reaches."""
    if _summary_logger.filters or not _summary_logger.isEnabledFor(logging.INFO):
        return None
    alone = None
    logger: logging.Logger | None = _summary_logger
    while logger is not None:
        for handler in logger.handlers:
            if alone is not None or not isinstance(handler, GatewayLogHandler):
                return None
            alone = handler
        logger = logger.parent if logger.propagate else None
    if alone is None or alone.log_format != "json" or alone.filters or alone.level > logging.INFO:
        return None
    return alone


_STDLIB_JSON = structlog.processors.JSONRenderer(separators=(",", ":"))


def _json_line(_logger: Any, _name: str, event: EventDict) -> str:
    """The renderer of every JSON line, the summary line's included: orjson, compact."""
    try:
        # A date or a dataclass orjson would write its own way: refused, so it is written as structlog writes it.
        return orjson.dumps(event, option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except TypeError:  # what orjson does not write (an object, a lone surrogate): structlog's JSON, with its repr
        return str(_STDLIB_JSON(None, "", event))


class LinesAsLog(io.TextIOBase):
    """A text stream whose lines become log events, so that what pserve prints to stderr (``Starting server in
    PID N.``) is a JSON line like every other when logs are JSON.

    Text written while a line is being logged (logging reporting its own failure) goes to ``fallback`` as it is.
    """

    def __init__(self, fallback: TextIO, logger_name: str = "pserve") -> None:
        super().__init__()
        self._fallback = fallback
        self._log = structlog.get_logger(logger_name)
        self._pending = ""
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._local, "busy", False):
            return self._fallback.write(text)
        self._local.busy = True
        try:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                if line.strip():
                    self._log.info(line.rstrip())
        finally:
            self._local.busy = False
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.write("\n")
