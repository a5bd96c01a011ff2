"""The PasteDeploy server factory: waitress, on the port given as ``pserve ... http_port=N``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import waitress

from lms_api.services.files import MIB, MULTIPART_OVERHEAD_BYTES

DEFAULT_PORT = 6543


def server_factory(
    global_conf: dict[str, Any], host: str = "127.0.0.1", threads: str = "8", **options: Any
) -> Callable[[Any], None]:
    """Serve with waitress. ``http_port`` comes from the pserve command line (``http_port=8080``), else 6543.

    The port is read here rather than interpolated in the ini: a ``[DEFAULT] http_port`` would silently
    win over the command line.
    """
    port = int(global_conf.get("http_port") or DEFAULT_PORT)

    def serve(app: Any) -> None:
        # waitress spools a whole body before the app sees it: refuse bodies no route would accept, unread.
        settings = app.registry.lms_settings
        options.setdefault("max_request_body_size", settings.moodle_max_upload_mb * MIB + MULTIPART_OVERHEAD_BYTES)
        waitress.serve(app, host=host, port=port, threads=int(threads), **options)

    return serve
