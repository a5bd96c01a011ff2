"""The PasteDeploy server factory: waitress, on the port given as ``pserve ... http_port=N``."""

from __future__ import annotations

import errno
import gc
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import waitress

from lms_api.services.files import MIB, MULTIPART_OVERHEAD_BYTES

DEFAULT_PORT = 6543
LISTEN_BACKLOG = 1024  # waitress's own default


def server_factory(
    global_conf: dict[str, Any], host: str = "127.0.0.1", threads: str = "8", **options: Any
) -> Callable[[Any], None]:
    """Serve with waitress. ``http_port`` comes from the pserve command line (``http_port=8080``), else 6543.

    The port is read here rather than interpolated in the ini: a ``[DEFAULT] http_port`` would silently
    win over the command line. The socket is bound here too, before the app is built, so a port in use is
    one line and exit status 2, not a traceback after a started sandbox.
    """
    port = int(global_conf.get("http_port") or DEFAULT_PORT)
    listener = listen(host, port)

    def serve(app: Any) -> None:
        # waitress spools a whole body before the app sees it: refuse bodies no route would accept, unread.
        settings = app.registry.settings["lms_api.settings"]
        options.setdefault("max_request_body_size", settings.moodle_max_upload_mb * MIB + MULTIPART_OVERHEAD_BYTES)
        # What is built by now lives as long as the process. Frozen, it is no longer walked by the collector's full
        # passes, each of which held a request for 10-40 ms (a 51 KB site info makes thousands of objects per call).
        gc.collect()
        gc.freeze()
        signal.signal(signal.SIGTERM, _stop_serving)
        try:
            waitress.serve(app, sockets=[listener], threads=int(threads), **options)
        finally:  # stopped (Ctrl-C or SIGTERM): a SIGTERM now would cut short the writing of the last log lines
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return serve


def _stop_serving(signum: int, frame: Any) -> None:
    """SIGTERM, what orchestrators and ``kill`` send, ends the serve loop as Ctrl-C does: waitress gives the requests
    in progress up to 5 s to finish, and the process then exits through ``logging.shutdown``, which writes the log
    lines still queued. A second SIGTERM is ignored, so it cannot cut that short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


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
