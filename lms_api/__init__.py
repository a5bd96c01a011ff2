"""lms_api: a safe REST gateway in front of Moodle web services."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from lms_api.settings import SETTING_NAMES, SettingsError, load_settings, read_dotenv

if TYPE_CHECKING:
    from pyramid.router import Router


def main(global_config: dict[str, Any], **ini_settings: Any) -> Router:
    """PasteDeploy entry point used by ``pserve development.ini`` and ``pserve production.ini``."""
    # Imported here, not with the package: the command line (``lms-api token``) needs none of the app.
    from lms_api.config import make_app
    from lms_api.health import keep_site_info_fresh
    from lms_api.logging import LinesAsLog, drop_pserve_log_handler
    from lms_api.moodle.client import SANDBOX_EVENTS_URL
    from lms_api.server import DEFAULT_PORT
    from lms_api.webhooks import WEBHOOK_PATH

    try:
        settings = load_settings(ini_settings, os.environ, read_dotenv(global_config.get("here")))
    except SettingsError as error:
        for problem in error.problems:  # every one at once: an operator fixes them in one go
            print(f"lms_api: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    pyramid_settings = {key: value for key, value in ini_settings.items() if key.upper() not in SETTING_NAMES}
    if settings.uses_sandbox and settings.webhook_secret:
        # The sandbox plays Moodle's Event Trigger: it posts its events to this gateway's webhook, on the port pserve
        # serves (``http_port``, as lms_api.server reads it) from the loopback address.
        port = global_config.get("http_port") or DEFAULT_PORT
        pyramid_settings[SANDBOX_EVENTS_URL] = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    drop_pserve_log_handler()
    app = make_app(settings, pyramid_settings)
    keep_site_info_fresh(app)
    if settings.log_format == "json":
        sys.stderr = LinesAsLog(sys.stderr)
    return app
