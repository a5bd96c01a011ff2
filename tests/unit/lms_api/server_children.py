"""What the server tests run in a fresh interpreter of their own: this module imports the server alone, not the test
module (with its fixtures and the whole app), so each child starts in a fraction of the time."""

import contextlib
import gc
import io
import resource
import socket
import weakref
from types import SimpleNamespace

from lms_api import server
from lms_api.jobs import EmbeddedEngine
from lms_api.settings import load_settings


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_see_what_the_collector_does():
    """In a process of its own: garbage made before serving, and whether gc had frozen anything by then."""
    seen = {}

    class Garbage:
        pass

    cycle = Garbage()
    cycle.itself = cycle
    garbage = weakref.ref(cycle)
    del cycle

    def create_server(app, **options):
        seen.update(frozen=gc.get_freeze_count(), garbage_left=garbage() is not None)
        return SimpleNamespace(print_listen=lambda text: None, run=lambda: None)

    server.waitress.create_server = create_server
    gc.disable()  # only serve() collects
    server.server_factory({"http_port": str(_free_port())})(_app())
    return seen


def fit_under_limits(soft, hard, needed):
    """In a process of its own, whose limits on open files start at ``soft`` and ``hard``: what fitting them to
    ``needed`` answers (or the exit status and what it printed), and the limits after."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        try:
            answer = server.fit_open_files_limit(needed, "connection_limit and threads")
        except SystemExit as stopped:
            answer = ("exit", stopped.code)
    return answer, printed.getvalue(), resource.getrlimit(resource.RLIMIT_NOFILE)


def _app():
    settings = load_settings({"lms_api.environment": "development"}, {})
    return SimpleNamespace(
        registry=SimpleNamespace(settings={"lms_api.settings": settings}, jobs=EmbeddedEngine(1, 60))
    )
