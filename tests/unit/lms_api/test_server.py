"""The waitress runner the ini files use: the port from the command line, bound before the app is built."""

import signal
import socket
from types import SimpleNamespace

import pytest

from lms_api import server
from lms_api.services.files import MIB, MULTIPART_OVERHEAD_BYTES
from lms_api.settings import load_settings
from tests.conftest import free_port

App = SimpleNamespace(
    registry=SimpleNamespace(settings={"lms_api.settings": load_settings({"lms_api.environment": "development"}, {})})
)


@pytest.fixture(autouse=True)
def signal_handlers(monkeypatch):
    """The handlers serve() installs, kept from the test process."""
    installed = []
    monkeypatch.setattr(server.signal, "signal", lambda signum, handler: installed.append((signum, handler)))
    return installed


def test_the_port_comes_from_the_command_line_and_waitress_gets_the_bound_socket(monkeypatch):
    served = {}
    monkeypatch.setattr(server.waitress, "serve", lambda app, **options: served.update(app=app, **options))
    port = free_port()

    serve = server.server_factory({"http_port": str(port)}, host="127.0.0.1", threads="4")
    serve(App)

    (listener,) = served["sockets"]
    try:
        assert listener.getsockname() == ("127.0.0.1", port)
        assert served["threads"] == 4
        assert served["max_request_body_size"] == 50 * MIB + MULTIPART_OVERHEAD_BYTES  # MOODLE_MAX_UPLOAD_MB
    finally:
        listener.close()


def test_what_was_built_before_serving_is_frozen_out_of_the_collectors_passes(monkeypatch):
    steps = []
    monkeypatch.setattr(
        server, "gc", SimpleNamespace(collect=lambda: steps.append("collect"), freeze=lambda: steps.append("freeze"))
    )
    monkeypatch.setattr(server.waitress, "serve", lambda app, sockets, **options: steps.append(sockets))

    server.server_factory({"http_port": str(free_port())}, host="127.0.0.1", threads="4")(App)

    *before, (listener,) = steps
    listener.close()
    assert before == ["collect", "freeze"]


def test_sigterm_stops_the_serve_loop_as_ctrl_c_does_and_is_ignored_once_it_has_stopped(monkeypatch, signal_handlers):
    while_serving = []
    monkeypatch.setattr(
        server.waitress, "serve", lambda app, sockets, **options: while_serving.extend([*signal_handlers, sockets[0]])
    )

    server.server_factory({"http_port": str(free_port())}, host="127.0.0.1", threads="4")(App)

    (signum, stop_serving), listener = while_serving
    listener.close()
    assert signum == signal.SIGTERM
    with pytest.raises(SystemExit) as stopped:
        stop_serving(signal.SIGTERM, None)
    assert stopped.value.code == 0
    assert signal_handlers[-2:] == [(signal.SIGTERM, signal.SIG_IGN)] * 2  # after serving, and by the stop itself


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
