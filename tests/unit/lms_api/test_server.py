"""The waitress runner the ini files use: the port from the command line, bound before the app is built; the limit on
open files raised to the hard one, which must fit the connection limit and each thread's connections; waitress's
options; the thread pool that says when it stops."""

import configparser
import multiprocessing
import signal
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from lms_api import server
from lms_api.bodysizes import MULTIPART_OVERHEAD_BYTES
from lms_api.jobs import EmbeddedEngine
from lms_api.settings import MIB, load_settings
from tests.support.paths import ROOT
from tests.support.servers import free_port
from tests.support.timing import eventually
from tests.unit.lms_api.server_children import fit_under_limits, serve_and_see_what_the_collector_does


class Events:
    """An app's event engine, which says when it was closed."""

    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def app_with(**environ):
    settings = load_settings({"lms_api.environment": "development"}, environ)
    jobs = EmbeddedEngine(1, 60)  # no job: closed once the server stops, as a real app's
    registry = SimpleNamespace(settings={"lms_api.settings": settings}, jobs=jobs, events=Events())
    return SimpleNamespace(registry=registry)


App = app_with()


class FakeWaitress:
    """Takes what serve() hands to waitress.create_server; its server's run() calls ``while_serving`` and returns."""

    def __init__(self):
        self.created = {}
        self.while_serving = lambda: None

    def create_server(self, app, **options):
        self.created = {"app": app, **options}
        return SimpleNamespace(print_listen=lambda text: None, run=lambda: self.while_serving())

    @property
    def listener(self):
        (listener,) = self.created["sockets"]
        return listener


@pytest.fixture
def waitress(monkeypatch):
    fake = FakeWaitress()
    monkeypatch.setattr(server.waitress, "create_server", fake.create_server)
    yield fake
    if fake.created:
        fake.listener.close()
        fake.created["_dispatcher"].set_thread_count(0)


@pytest.fixture(autouse=True)
def signal_handlers(monkeypatch):
    """The handlers serve() installs, kept from the test process."""
    installed = []
    monkeypatch.setattr(server.signal, "signal", lambda signum, handler: installed.append((signum, handler)))
    return installed


@pytest.fixture(autouse=True)
def frozen(monkeypatch):
    """gc.freeze() in the test process would keep every object of every later test out of the collector's reach;
    the freezing itself is tested in a process of its own."""
    steps = []
    monkeypatch.setattr(
        server, "gc", SimpleNamespace(collect=lambda: steps.append("collect"), freeze=lambda: steps.append("freeze"))
    )
    return steps


def in_child(function, *args):
    """``function(*args)`` in a fresh interpreter: for what would change the test process for good."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(function, *args).result(timeout=60)


def test_the_port_comes_from_the_command_line_and_waitress_gets_the_bound_socket(waitress):
    port = free_port()

    server.server_factory({"http_port": str(port)}, host="127.0.0.1", threads="13")(App)

    assert waitress.listener.getsockname() == ("127.0.0.1", port)
    assert waitress.created["threads"] == 13
    assert len(waitress.created["_dispatcher"].threads) == 13


def test_forwarded_headers_reach_the_app_and_no_server_header_names_waitress(waitress):
    server.server_factory({"http_port": str(free_port())}, clear_untrusted_proxy_headers="true", ident="waitress")(App)

    assert waitress.created["clear_untrusted_proxy_headers"] is False  # lms_api.caller judges them
    assert "trusted_proxy" not in waitress.created
    assert waitress.created["ident"] == ""  # waitress then sends no Server header


@pytest.mark.parametrize(
    ("environ", "largest"),
    [
        ({}, 50 * MIB + MULTIPART_OVERHEAD_BYTES),  # MOODLE_MAX_UPLOAD_MB and its framing beat MAX_JSON_BODY_KB
        ({"MOODLE_MAX_UPLOAD_MB": "1", "MAX_JSON_BODY_KB": "4096"}, 4096 * 1024),
    ],
)
def test_waitress_refuses_only_bodies_larger_than_any_route_takes(waitress, environ, largest):
    server.server_factory({"http_port": str(free_port())})(app_with(**environ))

    assert waitress.created["max_request_body_size"] == largest


def test_what_was_built_before_serving_is_collected_then_frozen(waitress, frozen):
    server.server_factory({"http_port": str(free_port())})(App)

    assert frozen == ["collect", "freeze"]


def test_in_a_process_of_its_own_what_was_built_before_serving_is_frozen_and_garbage_collected_first():
    seen = in_child(serve_and_see_what_the_collector_does)

    assert seen["frozen"] > 1000  # the app, its modules and settings, out of the collector's full passes
    assert not seen["garbage_left"]  # collected first, not frozen for the life of the process


def test_sigterm_stops_the_serve_loop_as_ctrl_c_does_and_is_ignored_once_it_has_stopped(waitress, signal_handlers):
    while_serving = []
    waitress.while_serving = lambda: while_serving.extend(signal_handlers)

    server.server_factory({"http_port": str(free_port())}, host="127.0.0.1", threads="16")(App)

    ((signum, stop_serving),) = while_serving
    assert signum == signal.SIGTERM
    with pytest.raises(SystemExit) as stopped:
        stop_serving(signal.SIGTERM, None)
    assert stopped.value.code == 0
    assert signal_handlers[-2:] == [(signal.SIGTERM, signal.SIG_IGN)] * 2  # after serving, and by the stop itself


class HeldTask:
    """A request that is served until ``release`` is set."""

    def __init__(self):
        self.started, self.release, self.cancelled = threading.Event(), threading.Event(), False

    def service(self):
        self.started.set()
        self.release.wait(10)

    def cancel(self):
        self.cancelled = True


def test_the_dispatcher_counts_requests_in_flight_and_says_when_it_shuts_down(monkeypatch):
    dispatcher = server.AnnouncingDispatcher()
    dispatcher.set_thread_count(1)
    served, waiting = HeldTask(), HeldTask()
    try:
        # Threads just started, or waiting for work, are no requests (waitress' active_count counts the first)
        assert dispatcher.in_flight() == 0
        dispatcher.add_task(served)
        dispatcher.add_task(waiting)
        eventually(served.started.is_set, "the first request served")
        assert dispatcher.in_flight() == 2  # one served, one waiting for the thread

        with capture_logs() as events:
            # A logger made inside the capture: the module's own may be bound already to another test's set-up.
            monkeypatch.setattr(server, "log", structlog.get_logger("lms_api.server"))
            dispatcher.shutdown(timeout=0.2)

        assert events == [{"event": "server.shutting_down", "in_flight": 2, "wait_s": 0.2, "log_level": "info"}]
        assert waiting.cancelled
        assert dispatcher.in_flight() == 1  # still served after the wait: the process ends it
        served.release.set()
        eventually(lambda: dispatcher.in_flight() == 0, "the served request done")
    finally:
        served.release.set()
        dispatcher.set_thread_count(0)


def test_told_to_stop_the_dispatcher_ends_the_event_streams_before_it_waits_for_the_requests_in_flight():
    stream = HeldTask()  # a stream holds its thread until the engine ends it
    ended = []

    def end_streams():
        ended.append(stream.started.is_set())
        stream.release.set()

    dispatcher = server.AnnouncingDispatcher(before_shutdown=end_streams)
    dispatcher.set_thread_count(1)
    try:
        dispatcher.add_task(stream)
        eventually(stream.started.is_set, "the stream served")
        started = time.monotonic()

        dispatcher.shutdown(timeout=5)

        assert ended == [True]
        assert time.monotonic() - started < 2  # not waitress's 5 s of grace
        assert dispatcher.in_flight() == 0
    finally:
        stream.release.set()
        dispatcher.set_thread_count(0)


def test_serve_has_the_apps_event_engine_closed_when_it_is_told_to_stop(waitress):
    app = app_with()
    waitress.while_serving = lambda: waitress.created["_dispatcher"].shutdown(timeout=0)

    server.server_factory({"http_port": str(free_port())})(app)

    assert app.registry.events.closed == 1


@pytest.mark.parametrize(
    ("threads", "environ"),
    [
        (13, {}),  # the 8 streams of EVENTS_MAX_STREAMS' default, and 5 threads besides
        (7, {"EVENTS_MAX_STREAMS": "2"}),
        (1, {"NCHAN_PUBLISH_URL": "http://127.0.0.1:8090/lms_api/publish"}),  # nginx holds the streams
    ],
)
def test_threads_that_leave_five_besides_the_event_streams_are_enough(threads, environ):
    server.check_stream_threads(threads, app_with(**environ).registry.settings["lms_api.settings"])


@pytest.mark.parametrize(("threads", "environ", "least"), [(12, {}, 13), (4, {"EVENTS_MAX_STREAMS": "1"}, 6)])
def test_too_few_threads_for_the_event_streams_is_one_line_and_status_2(capsys, threads, environ, least):
    settings = app_with(**environ).registry.settings["lms_api.settings"]

    with pytest.raises(SystemExit) as stopped:
        server.check_stream_threads(threads, settings)

    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"lms_api: threads = {threads} is too few for {settings.events_max_streams} event streams "
        f"(EVENTS_MAX_STREAMS), each holding a thread, and the requests besides them: set threads to at least {least}, "
        "lower EVENTS_MAX_STREAMS, or let nginx with nchan hold the streams (NCHAN_PUBLISH_URL)\n"
    )


def test_serve_with_too_few_threads_for_the_event_streams_exits_with_status_2_before_serving(
    waitress, monkeypatch, capsys
):
    class Exited(Exception):
        pass

    def exit_now(status):
        raise Exited(status)

    monkeypatch.setattr(server.os, "_exit", exit_now)  # pserve would make status 0 of a SystemExit
    monkeypatch.setattr(server, "listen", lambda host, port: None)

    with pytest.raises(Exited) as exited:
        server.server_factory({"http_port": str(free_port())}, threads="12")(App)

    assert exited.value.args == (2,)
    assert "too few for 8 event streams" in capsys.readouterr().err
    assert not waitress.created


def test_the_default_threads_and_development_ini_serve_the_default_event_streams():
    development = configparser.ConfigParser(interpolation=None)
    development.read_string((ROOT / "development.ini").read_text())
    settings = App.registry.settings["lms_api.settings"]

    for threads in (server.DEFAULT_THREADS, int(development["server:main"]["threads"])):
        server.check_stream_threads(threads, settings)


def test_a_port_in_use_is_one_line_and_status_2(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(SystemExit) as stopped:
            server.listen("127.0.0.1", port)

    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"lms_api: cannot listen on 127.0.0.1:{port}: the port is already in use\n"


def test_a_host_that_cannot_be_bound_says_why(capsys):
    with pytest.raises(SystemExit):
        server.listen("192.0.2.1", free_port())  # TEST-NET-1: not an address of this machine

    assert capsys.readouterr().err.startswith("lms_api: cannot listen on 192.0.2.1:")


def test_open_files_needed_counts_connections_threads_their_redis_connections_and_spares():
    assert server.open_files_needed(1000, 128) == 1000 + 128 + server.SPARE_FILES
    # Each thread: its connection to Moodle, and one in each Redis client's pool.
    assert server.open_files_needed(1000, 128, redis_clients=3) == 1000 + 128 * 4 + server.SPARE_FILES


def test_the_redis_clients_counted_are_those_an_app_with_redis_makes(make_gateway, monkeypatch):
    made = []
    from_url = redis.Redis.from_url

    def counted(url, **options):
        made.append(url)
        return from_url(url, **options)

    monkeypatch.setattr(redis.Redis, "from_url", counted)

    # Clients connect on first use: no Redis is needed here. With a webhook secret, as every client is then made.
    make_gateway(REDIS_URL="redis://127.0.0.1:1/0", WEBHOOK_SECRET="w" * 32)

    assert len(made) == server.REDIS_CLIENTS


def test_a_soft_limit_on_open_files_below_what_is_needed_is_raised_to_the_hard_limit():
    answer, printed, limits = in_child(fit_under_limits, 256, 2048, 1192)

    assert answer == server.RaisedLimit(before=256, after=2048)
    assert limits == (2048, 2048)
    assert printed == ""


def test_a_soft_limit_that_fits_is_raised_to_the_hard_limit_too():
    """What is counted is not every file a request may open: the room up to the hard limit costs nothing."""
    answer, _, limits = in_child(fit_under_limits, 1500, 2048, 1192)

    assert answer == server.RaisedLimit(before=1500, after=2048)
    assert limits == (2048, 2048)


def test_a_soft_limit_at_the_hard_limit_is_left_alone():
    answer, _, limits = in_child(fit_under_limits, 2048, 2048, 1192)

    assert answer is None
    assert limits == (2048, 2048)


def test_a_hard_limit_below_what_is_needed_refuses_to_start_naming_both_numbers():
    answer, printed, limits = in_child(fit_under_limits, 256, 1024, 1192)

    assert answer == ("exit", 2)
    assert printed == (
        "lms_api: connection_limit and threads need 1192 open files, but the hard limit is 1024 (ulimit -Hn): "
        "raise it, or lower connection_limit\n"
    )
    assert limits == (256, 1024)


def test_the_factory_fits_the_limit_to_the_connection_limit_before_it_binds(monkeypatch):
    asked = []
    monkeypatch.setattr(server, "fit_open_files_limit", lambda needed, counted: asked.append(needed))
    monkeypatch.setattr(server, "listen", lambda host, port: asked.append("listen"))

    server.server_factory({}, threads="128", connection_limit="1000")
    server.server_factory({}, threads="8")  # waitress's own connection limit, 100

    assert asked == [1000 + 128 + server.SPARE_FILES, "listen", 100 + 8 + server.SPARE_FILES, "listen"]


@pytest.mark.parametrize(
    ("environ", "needed"),
    [
        ({}, [1000 + 128 + server.SPARE_FILES]),
        (
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            [1000 + 128 + server.SPARE_FILES, 1000 + 128 * (1 + server.REDIS_CLIENTS) + server.SPARE_FILES],
        ),
    ],
    ids=["in-process", "redis"],
)
def test_with_redis_the_limit_is_fitted_again_to_each_threads_redis_connections(waitress, monkeypatch, environ, needed):
    asked = []
    monkeypatch.setattr(server, "fit_open_files_limit", lambda needed, counted: asked.append((needed, counted)))

    server.server_factory({"http_port": str(free_port())}, threads="128", connection_limit="1000")(app_with(**environ))

    assert [number for number, _ in asked] == needed
    assert [counted for _, counted in asked][1:] == [
        "connection_limit, threads and their Redis connections (REDIS_URL)"
    ][: len(needed) - 1]


def test_production_ini_says_how_many_open_files_its_connections_and_threads_need():
    ini = (ROOT / "production.ini").read_text()
    server_section = configparser.ConfigParser(interpolation=None)
    server_section.read_string(ini)
    connection_limit = int(server_section["server:main"]["connection_limit"])
    threads = int(server_section["server:main"]["threads"])

    assert f"{server.open_files_needed(connection_limit, threads):,}" in ini
    assert f"{server.open_files_needed(connection_limit, threads, server.REDIS_CLIENTS):,}" in ini
    assert f"{1 + server.REDIS_CLIENTS} x threads" in ini
