"""structlog set-up, request ids, and the one summary line per request."""

from __future__ import annotations

import io
import itertools
import json
import logging
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import structlog
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from lms_api.calllog import CallLog
from lms_api.moodle.errors import redact
from lms_api.security import checked_identity
from lms_api.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
FLUSH_TIMEOUT_S = 5.0  # how long flush() and close() wait for the writer thread
MAX_QUEUED_LINES = 10_000
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

log = structlog.get_logger("lms_api.request")


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


# What the writer thread is handed: an event to render, a line rendered already, a flush to answer, or its stop.
_Queued = logging.LogRecord | str | threading.Event | None


class GatewayLogHandler(logging.Handler):
    """The gateway's own handler on the root logger: lines are rendered and written by a thread of its own.

    A request thread only queues its event. Rendering it, and writing to stderr (a system call, which lets go of
    the GIL and then waits for it again), happen on the writer thread, a batch of lines per write: with many
    callers, request threads no longer queue on a lock held across a write. ``flush()`` returns once every line
    queued before it is written, and ``close()`` (run by ``logging.shutdown`` at exit, which the waitress runner
    also reaches on SIGTERM) writes the rest first; each waits ``FLUSH_TIMEOUT_S`` at most.
    """

    _BATCH = 512  # lines per write at most, so one flush is never held behind an endless stream

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._closed = False
        # Bounded: when stderr is read slower than lines come, callers wait for the writer rather than memory grow.
        self._queue: queue.Queue[_Queued] = queue.Queue(MAX_QUEUED_LINES)
        self._writer = threading.Thread(target=self._write_lines, name="lms_api-log-writer", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # Without the handler's lock around emit: the queue is safe between threads, and a caller holding the lock
        # while it waits for room in a full queue would keep out the writer, should the writer itself log.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._writer:  # the writer logging: written now, not queued behind itself
            self._write(self._render(record))
        elif not self._writer.is_alive():  # closed: written by the caller, one at a time
            self._write_leftovers(record)
        else:
            # structlog's event has its request id and traceback in it already; another library's line is rendered
            # now, while this thread's request id is still bound.
            self._queue.put(record if hasattr(record, "_logger") else self._render(record))
            if self._closed and not self._writer.is_alive():  # queued behind the writer's stop: nobody else will
                self._write_leftovers()

    def flush(self) -> None:
        written = threading.Event()
        if self._hand_to_writer(written):
            written.wait(FLUSH_TIMEOUT_S)

    def close(self) -> None:
        self._closed = True
        if self._hand_to_writer(None):
            self._writer.join(FLUSH_TIMEOUT_S)
        if not self._writer.is_alive():  # else it is stuck on a stalled stderr, and so would this thread be
            self._write_leftovers()
        super().close()

    def _write_leftovers(self, *records: logging.LogRecord) -> None:
        """Write, on this thread, what the stopped writer left in the queue, then ``records``."""
        self.acquire()
        try:
            lines: list[str] = []
            written: list[threading.Event] = []
            for item in self._queued():
                self._take(item, lines, written)
            lines += [self._render(record) for record in records]
            self._write_batch(lines, written)
        finally:
            self.release()

    def _hand_to_writer(self, marker: threading.Event | None) -> bool:
        if not self._writer.is_alive() or threading.current_thread() is self._writer:
            return False
        try:
            self._queue.put(marker, timeout=FLUSH_TIMEOUT_S)
        except queue.Full:  # the writer is stuck on a stalled stderr
            return False
        return True

    def _write_lines(self) -> None:
        stopping = False
        while not stopping:
            lines: list[str] = []
            written: list[threading.Event] = []
            for item in itertools.chain([self._queue.get()], self._queued()):
                stopping = self._take(item, lines, written)
                if stopping or len(lines) >= self._BATCH:
                    break
            self._write_batch(lines, written)

    def _queued(self) -> Iterator[_Queued]:
        """What is in the queue now, without waiting for more."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def _take(self, item: _Queued, lines: list[str], written: list[threading.Event]) -> bool:
        """Add a queued item to a batch: a line, or a flush to answer once the batch is written. True for a stop."""
        if isinstance(item, threading.Event):
            written.append(item)
        elif item is not None:
            lines.append(item if isinstance(item, str) else self._render(item))
        return item is None

    def _write_batch(self, lines: list[str], written: list[threading.Event]) -> None:
        if lines:
            self._write("".join(lines))
        for event in written:
            event.set()

    def _render(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record) + "\n"
        except Exception as error:
            # Said in a line of its own, not by handleError: that prints to stderr, which pserve's lines turned
            # into a logger, and the writer would be logging into its own queue.
            failure = {"event": "log.unrenderable", "logger": record.name, "error": type(error).__name__}
            return json.dumps({**failure, "level": "error"}) + "\n"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: S110  # stderr is closed, broken or gone: there is nowhere left to say so
            pass


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
    handler = GatewayLogHandler(stderr)
    handler.setFormatter(log_formatter(log_format))
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
    renderer: Any
    if log_format == "console":
        # In call order, so a request line reads status, method, path, ms and sub first.
        renderer = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)
    else:
        renderer = structlog.processors.JSONRenderer()
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
    """The caller's ``X-Request-ID`` when it is safe to echo, else a new one."""
    incoming: str = request.headers.get(REQUEST_ID_HEADER, "")
    if _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


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
            log.info(
                "request",
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
