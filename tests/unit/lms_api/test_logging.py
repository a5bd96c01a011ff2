"""The gateway's log handler: lines rendered and written by a thread of their own, none lost at flush or close."""

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading

import pytest
import structlog
from pyramid.request import Request

from lms_api.logging import (
    SUMMARY_LOGGER,
    GatewayLogHandler,
    LinesAsLog,
    configure_logging,
    log_formatter,
    log_summary,
    request_id,
    scrub_from_logs,
)
from tests.support.paths import ROOT
from tests.support.timing import eventually


class SlowStream(io.StringIO):
    """A stderr whose writes wait until the test lets them go, counting them."""

    def __init__(self):
        super().__init__()
        self.may_write = threading.Event()
        self.writes = 0

    def write(self, text):
        self.may_write.wait(5)
        self.writes += 1
        return super().write(text)


class BrokenStream(io.StringIO):
    def write(self, text):
        raise OSError("stderr is gone")


@pytest.fixture
def gateway_handler():
    """configure_logging's handler on the root logger, on a stream of the test's, removed afterwards."""
    configure_logging("json", [])
    root = logging.getLogger()
    (handler,) = [handler for handler in root.handlers if isinstance(handler, GatewayLogHandler)]
    handler.stream = SlowStream()
    yield handler
    handler.stream.may_write.set()
    root.removeHandler(handler)
    handler.close()


def lines(handler):
    return [json.loads(line) for line in handler.stream.getvalue().splitlines()]


def test_a_request_thread_does_not_wait_for_the_write_and_flush_waits_for_every_line(gateway_handler):
    log = structlog.get_logger("lms_api.test")
    for number in range(3):
        log.info("queued", number=number)

    assert gateway_handler.stream.getvalue() == ""  # the writer is held: the callers were not
    gateway_handler.stream.may_write.set()
    gateway_handler.flush()

    assert [(line["event"], line["number"]) for line in lines(gateway_handler)] == [("queued", n) for n in range(3)]


def test_lines_queued_while_a_write_is_held_go_out_in_one_write(gateway_handler):
    log = structlog.get_logger("lms_api.test")
    log.info("first")
    threading.Event().wait(0.05)  # the writer has taken the first line and waits on the stream
    for number in range(50):
        log.info("behind", number=number)

    gateway_handler.stream.may_write.set()
    gateway_handler.flush()

    assert len(lines(gateway_handler)) == 51
    assert gateway_handler.stream.writes == 2


def test_another_librarys_line_keeps_the_request_id_bound_when_it_was_logged(gateway_handler):
    with structlog.contextvars.bound_contextvars(request_id="r-42"):
        logging.getLogger("waitress").warning("task queue depth is %d", 7)
    gateway_handler.stream.may_write.set()
    gateway_handler.flush()

    (line,) = lines(gateway_handler)
    assert (line["event"], line["request_id"], line["logger"]) == ("task queue depth is 7", "r-42", "waitress")


def test_close_writes_what_is_still_queued_and_stops_the_writer(gateway_handler):
    structlog.get_logger("lms_api.test").info("last words")
    gateway_handler.stream.may_write.set()

    gateway_handler.close()

    assert [line["event"] for line in lines(gateway_handler)] == ["last words"]
    assert gateway_handler.listener.stopped.is_set()
    writer = gateway_handler.listener._thread_seen  # the thread that wrote the line
    writer.join(1)
    assert not writer.is_alive()


def test_a_broken_stderr_loses_its_lines_but_not_the_writer():
    handler = GatewayLogHandler(BrokenStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "into the void"}))
    handler.flush()
    handler.stream = io.StringIO()
    handler.handle(logging.makeLogRecord({"msg": "heard"}))
    handler.close()

    assert handler.stream.getvalue() == "heard\n"


def test_configuring_again_closes_the_handler_it_replaces(gateway_handler):
    gateway_handler.stream.may_write.set()
    configure_logging("json", [])
    root = logging.getLogger()
    (replacement,) = [handler for handler in root.handlers if isinstance(handler, GatewayLogHandler)]

    assert replacement is not gateway_handler
    assert gateway_handler.listener.stopped.is_set()
    root.removeHandler(replacement)
    replacement.close()


def test_a_line_that_cannot_be_rendered_is_reported_and_the_next_one_written():
    class FailsOnBoom(logging.Formatter):
        def format(self, record):
            if "boom" in str(record.msg):
                raise ValueError("cannot render")
            return super().format(record)

    handler = GatewayLogHandler(io.StringIO())
    handler.setFormatter(FailsOnBoom("%(message)s"))
    foreign = logging.makeLogRecord({"name": "waitress", "msg": "boom"})
    structured = logging.makeLogRecord({"name": "lms_api.x", "msg": {"event": "boom"}, "_logger": None})
    for record in (foreign, structured, logging.makeLogRecord({"msg": "fine"})):
        handler.handle(record)
    handler.close()

    first, second, third = handler.stream.getvalue().splitlines()
    assert json.loads(first) == {
        "event": "log.unrenderable",
        "logger": "waitress",
        "error": "ValueError",
        "level": "error",
    }
    assert json.loads(second)["logger"] == "lms_api.x"
    assert third == "fine"


def test_a_traceback_is_kept_though_the_line_is_rendered_on_the_writer_thread(gateway_handler):
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        structlog.get_logger("lms_api.test").exception("unexpected.error")
    gateway_handler.stream.may_write.set()
    gateway_handler.flush()

    (line,) = lines(gateway_handler)
    assert "ZeroDivisionError: division by zero" in line["exception"]


def test_a_secret_is_scrubbed_from_lines_rendered_on_the_writer_thread(gateway_handler):
    scrub_from_logs("WRITER-SECRET-0123456789")
    structlog.get_logger("lms_api.test").warning("oops", leaked="WRITER-SECRET-0123456789")
    gateway_handler.stream.may_write.set()
    gateway_handler.flush()

    (line,) = lines(gateway_handler)
    assert line["leaked"] == "[redacted]"


def test_a_line_logged_by_the_writer_itself_is_written_at_once_not_queued_behind_itself():
    class LoggingStream(io.StringIO):
        """A stderr that logs what is written to it, as pserve's stderr does: the writer logs while writing."""

        def write(self, text):
            if "echo" not in text:
                logging.getLogger("echoed").warning("echo")
            return super().write(text)

    handler = GatewayLogHandler(LoggingStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    handler.acquire()  # as logging.shutdown holds it around flush(), or a caller waiting for room in a full queue
    try:
        logging.getLogger("lms_api.test").warning("first")
        handler.flush()
        written_while_held = handler.stream.getvalue()
    finally:
        handler.release()
        root.removeHandler(handler)
        handler.close()

    assert written_while_held.splitlines() == ["echo", "first"]


def test_what_pserve_prints_becomes_log_lines_and_a_line_logged_while_logging_goes_out_as_it_is(gateway_handler):
    fallback = io.StringIO()
    stderr = LinesAsLog(fallback)
    stderr.write("Starting server in PID 7.\nServing on ")
    stderr.write("http://127.0.0.1:6543\n\n")
    stderr.write("no newline yet")
    stderr.flush()
    gateway_handler.stream.may_write.set()
    gateway_handler.flush()
    stderr._local.busy = True  # as while logging reports its own failure
    stderr.write("--- Logging error ---\n")

    assert [(line["logger"], line["event"]) for line in lines(gateway_handler)] == [
        ("pserve", "Starting server in PID 7."),
        ("pserve", "Serving on http://127.0.0.1:6543"),
        ("pserve", "no newline yet"),
    ]
    assert fallback.getvalue() == "--- Logging error ---\n"
    assert stderr.writable()


class HeldStream(io.StringIO):
    """A stderr whose first write waits until the test lets it go, saying when the writer has reached it."""

    def __init__(self):
        super().__init__()
        self.reached = threading.Event()
        self.may_write = threading.Event()

    def write(self, text):
        self.reached.set()
        self.may_write.wait(5)
        return super().write(text)


def test_a_line_logged_while_close_waits_for_the_writer_is_written_too():
    handler = GatewayLogHandler(HeldStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "before close"}))
    handler.stream.reached.wait(5)  # the writer holds that line, waiting on the stream
    closing = threading.Thread(target=handler.close)
    closing.start()
    eventually(lambda: not handler.queue.empty(), "the writer's stop queued")

    handler.handle(logging.makeLogRecord({"msg": "while closing"}))  # behind the stop
    handler.stream.may_write.set()
    closing.join(5)
    handler.handle(logging.makeLogRecord({"msg": "after close"}))

    assert handler.stream.getvalue().splitlines() == ["before close", "while closing", "after close"]


def test_configuring_again_adds_the_new_handler_before_the_old_one_goes_and_writes_to_the_real_stderr(monkeypatch):
    real_stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", LinesAsLog(real_stderr))  # as after a first app under pserve
    configure_logging("json", [])
    root = logging.getLogger()
    (first,) = [handler for handler in root.handlers if isinstance(handler, GatewayLogHandler)]
    handlers_while_closing = []
    closing = first.close
    monkeypatch.setattr(first, "close", lambda: (handlers_while_closing.extend(root.handlers), closing()))

    configure_logging("json", [])

    (second,) = [handler for handler in root.handlers if isinstance(handler, GatewayLogHandler)]
    root.removeHandler(second)
    second.close()
    assert second in handlers_while_closing
    assert first.stream is real_stderr and second.stream is real_stderr


@pytest.mark.parametrize(
    "secret",
    ['jwt"secret\\with-quotes-0123456789', "sécret-with-non-ascii-0123456789", "tab\tsecret-0123456789"],
)
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_secret_is_scrubbed_however_the_renderer_escapes_it(secret, log_format):
    scrub_from_logs(secret)
    handler = GatewayLogHandler(io.StringIO())
    handler.setFormatter(log_formatter(log_format))
    record = logging.makeLogRecord(
        {"msg": {"event": "oops", "leaked": secret, "in_a_list": [secret]}, "_logger": None, "_name": "info"}
    )
    handler.handle(record)
    handler.close()

    written = handler.stream.getvalue()
    assert written.count("[redacted]") == 2, written
    assert "0123456789" not in written


def test_a_secret_inside_a_longer_one_leaves_no_piece_of_the_longer_one():
    scrub_from_logs("INNER-SECRET-0123456789", "OUTER-INNER-SECRET-0123456789-TAIL")
    handler = GatewayLogHandler(io.StringIO())
    handler.setFormatter(log_formatter("json"))
    handler.handle(logging.makeLogRecord({"msg": "token OUTER-INNER-SECRET-0123456789-TAIL"}))
    handler.close()

    assert "TAIL" not in handler.stream.getvalue()


def test_a_caller_waits_for_room_in_a_full_queue_and_no_line_is_dropped(monkeypatch):
    monkeypatch.setattr("lms_api.logging.MAX_QUEUED_LINES", 2)
    handler = GatewayLogHandler(HeldStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "held"}))
    handler.stream.reached.wait(5)  # the writer waits on the stream; the queue's two places are free
    caller = threading.Thread(
        target=lambda: [handler.handle(logging.makeLogRecord({"msg": f"line {n}"})) for n in range(4)]
    )
    caller.start()
    eventually(lambda: handler.queue.qsize() == 2, "the queue filled")
    caller.join(0.2)

    assert caller.is_alive()  # waiting for room, not dropping what does not fit
    handler.stream.may_write.set()
    caller.join(5)
    handler.close()
    assert handler.stream.getvalue().splitlines() == ["held", "line 0", "line 1", "line 2", "line 3"]


def test_close_on_a_stalled_stderr_gives_up_after_the_flush_timeout(monkeypatch):
    monkeypatch.setattr("lms_api.logging.FLUSH_TIMEOUT_S", 0.2)
    handler = GatewayLogHandler(HeldStream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "stuck"}))
    handler.stream.reached.wait(5)
    closing = threading.Thread(target=handler.close)

    closing.start()
    closing.join(2)

    stalled, writer_stopped = closing.is_alive(), handler.listener.stopped.is_set()
    handler.stream.may_write.set()  # let the writer go, so it ends with the test
    assert not stalled, "close() waited for the stalled stderr"
    assert not writer_stopped  # the writer was still held when close() gave up


# Logs one line with every Python function it enters interrupted, as a signal handler would interrupt it (RQ's, on
# SIGTERM, logs), by a line logged on the same thread; in a process of its own, as a lock taken twice hangs it.
INTERRUPTED_AT_EVERY_CALL = """
import logging, sys
import structlog
from lms_api.logging import configure_logging

configure_logging("json", [])
interrupting = False

def interrupt(frame, event, arg):
    global interrupting
    if event == "call" and not interrupting:
        interrupting = True
        logging.getLogger("rq.worker").info("warm shut down requested")
        interrupting = False

sys.setprofile(interrupt)
LOG_THE_LINE
sys.setprofile(None)
logging.shutdown()
"""


@pytest.mark.parametrize(
    ("logged", "event"),
    [
        ('structlog.get_logger("lms_api.jobs").info("job.started")', "job.started"),
        ("from lms_api.logging import log_summary; log_summary(status=200)", "request"),  # rendered on this thread
    ],
)
def test_a_line_logged_while_this_thread_is_queueing_one_is_queued_too(logged, event):
    script = INTERRUPTED_AT_EVERY_CALL.replace("LOG_THE_LINE", logged)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("logging hung, waiting on a lock its own thread held")
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert event in events
    assert events.count("warm shut down requested") > 5  # every call on the way interrupted


SUMMARY = {
    "status": 200,
    "method": "GET",
    "path": "/api/moodle/siteinfo",
    "ms": 1.5,
    "sub": "ops",
    "route": "api.moodle.siteinfo",
    "moodle_functions": ["core_webservice_get_site_info"],
    "moodle_ms": 0.9,
    "retries": 0,
    "cache": None,
}


@pytest.fixture
def handler_alone(gateway_handler):
    """The gateway's handler, writing at once; alone on the root logger within :func:`alone_on_the_root`."""
    gateway_handler.stream.may_write.set()
    return gateway_handler


@contextlib.contextmanager
def alone_on_the_root(handler):
    """``handler`` as the only one on the root logger, as under pserve: pytest puts its own there for each test."""
    root = logging.getLogger()
    others = root.handlers
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = others


class CountsFormats:
    """Counts what a handler formats: a line rendered before it was queued is not formatted again."""

    def __init__(self, handler, monkeypatch):
        self.formatted = []
        format_record = handler.format
        monkeypatch.setattr(handler, "format", lambda record: self.formatted.append(record) or format_record(record))


def without_timestamp(line):
    return re.sub(r'"timestamp":"[^"]*"', '"timestamp":""', line)


def test_the_summary_line_is_rendered_on_the_request_thread_as_the_writer_would_render_it(handler_alone, monkeypatch):
    formats = CountsFormats(handler_alone, monkeypatch)
    with structlog.contextvars.bound_contextvars(request_id="r-1", job_id="j-1"):
        with alone_on_the_root(handler_alone):
            log_summary(**SUMMARY)
            handler_alone.flush()
        assert formats.formatted == []  # queued as its text: the writer only wrote it
        log_summary(**SUMMARY)  # with pytest's handlers on the root too: logged through logging
    handler_alone.flush()

    rendered_here, logged = handler_alone.stream.getvalue().splitlines()
    assert len(formats.formatted) == 1
    assert without_timestamp(rendered_here) == without_timestamp(logged)
    line = json.loads(rendered_here)
    assert list(line)[: len(SUMMARY) + 1] == [*SUMMARY, "event"]
    assert list(line)[len(SUMMARY) + 1 :] in (
        ["request_id", "job_id", "level", "logger", "timestamp"],
        ["job_id", "request_id", "level", "logger", "timestamp"],
    )
    assert (line["event"], line["request_id"], line["job_id"]) == ("request", "r-1", "j-1")
    assert (line["level"], line["logger"]) == ("info", SUMMARY_LOGGER)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line["timestamp"])


@pytest.mark.parametrize("bound", [{(1, 2): 3}, "loop"], ids=["tuple-key", "circular"])
def test_a_summary_line_no_json_writer_takes_is_said_unrenderable_and_the_request_goes_on(handler_alone, bound):
    if bound == "loop":
        bound = []
        bound.append(bound)
    with structlog.contextvars.bound_contextvars(request_id="r-4", odd=bound), alone_on_the_root(handler_alone):
        log_summary(**SUMMARY)
    handler_alone.flush()

    (line,) = handler_alone.stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "log.unrenderable"


def test_the_summary_line_reaches_any_other_handler_on_the_root_and_reads_as_before_in_console_logs(gateway_handler):
    gateway_handler.stream.may_write.set()
    console, json_lines = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    others = [logging.StreamHandler(console), logging.StreamHandler(json_lines)]
    others[0].setFormatter(log_formatter("console"))
    others[1].setFormatter(log_formatter("json"))
    for other in others:
        root.addHandler(other)
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-2"):
            log_summary(**SUMMARY)
    finally:
        for other in others:
            root.removeHandler(other)
    gateway_handler.flush()

    assert json.loads(json_lines.getvalue())["request_id"] == "r-2"
    assert lines(gateway_handler)[0]["request_id"] == "r-2"
    assert re.fullmatch(
        r"\S+Z \[info +\] request +\[lms_api\.request\] status=200 method=GET path=/api/moodle/siteinfo .* cache=None "
        r"request_id=r-2\n",
        console.getvalue(),
    )


@pytest.mark.parametrize(
    "secret",
    ['jwt"secret\\with-quotes-0123456789', "sécret-with-non-ascii-0123456789", "tab\tsecret-0123456789"],
)
def test_a_secret_is_scrubbed_from_the_summary_line_however_it_is_escaped(handler_alone, secret):
    scrub_from_logs(secret)
    with structlog.contextvars.bound_contextvars(request_id="r-3", leaked=secret), alone_on_the_root(handler_alone):
        log_summary(**{**SUMMARY, "path": f"/api/{secret}", "moodle_functions": [secret]})
    handler_alone.flush()

    written = handler_alone.stream.getvalue()
    assert written.count("[redacted]") == 3, written
    assert "0123456789" not in written


def test_a_summary_line_that_orjson_does_not_write_is_written_as_structlog_writes_it(handler_alone):
    with alone_on_the_root(handler_alone):
        log_summary(**{**SUMMARY, "path": "/api/\udcff", "sub": object(), "retries": 2**70})
    handler_alone.flush()

    (line,) = lines(handler_alone)
    assert line["path"] == "/api/\udcff"
    assert line["sub"].startswith("<object object at")
    assert line["retries"] == 2**70


def test_close_writes_the_summary_lines_still_queued_and_one_logged_after_it(handler_alone):
    handler_alone.stream = SlowStream()  # held: the lines wait in the queue
    with alone_on_the_root(handler_alone):
        for status in (200, 201):
            log_summary(**{**SUMMARY, "status": status})
        handler_alone.stream.may_write.set()

        handler_alone.close()
        log_summary(**{**SUMMARY, "status": 202})  # the writer has stopped: written by this thread

    assert [line["status"] for line in lines(handler_alone)] == [200, 201, 202]


REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def new_request_ids(count):
    request = Request.blank("/")  # no X-Request-ID: a new id each time
    return [request_id(request) for _ in range(count)]


def test_request_ids_are_unique_across_threads_and_look_as_uuid4_hex_did():
    made = [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda ids=ids: ids.extend(new_request_ids(20_000))) for ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every = [one for ids in made for one in ids]
    assert len(set(every)) == len(every) == 80_000
    assert all(REQUEST_ID.fullmatch(one) for one in every)


def test_a_forked_child_and_another_process_count_after_prefixes_of_their_own():
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its ids to the parent, then out, without pytest's clean-up
        try:
            os.write(write_end, " ".join(new_request_ids(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as from_child:
        in_child = from_child.read().split()
    os.waitpid(child, 0)
    spawned = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests.unit.lms_api.test_logging import new_request_ids; print(*new_request_ids(3))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    here = new_request_ids(3)

    assert len(in_child) == len(spawned) == 3
    prefixes = {ids[0][:20] for ids in (here, in_child, spawned)}
    assert len(prefixes) == 3
    assert len(set(here + in_child + spawned)) == 9
