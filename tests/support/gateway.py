"""The gateway under webtest: its settings, the app with the log lines it writes, and those lines captured."""

import io
import json
import logging

import webtest
from pyramid.config import Configurator
from pyramid.scripting import prepare

from lms_api.config import make_app
from lms_api.logging import log_formatter
from lms_api.moodle.client import MoodleClient
from lms_api.settings import load_settings
from tests.support.credentials import JWT_TEST_SECRET


def settings_for(base_url, token, **environ):
    values = {"MOODLE_BASE_URL": base_url, "MOODLE_TOKEN": token, "JWT_SECRET": JWT_TEST_SECRET, **environ}
    return load_settings({"lms_api.environment": "production"}, values)


class _CapturedLogs(logging.StreamHandler):
    """A test's copy of the rendered log lines; taken off the root logger after each test."""


def capture_logs(log_format="json"):
    """A stream that receives every log line from now to the end of the test, rendered as the gateway renders it."""
    stream = io.StringIO()
    handler = _CapturedLogs(stream)
    handler.setFormatter(log_formatter(log_format))
    logging.getLogger().addHandler(handler)
    return stream


def release_captured_logs():
    """Take every stream :func:`capture_logs` gave off the root logger (done after each test)."""
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if isinstance(handler, _CapturedLogs)]:
        root.removeHandler(handler)


class Gateway:
    """The WSGI app under webtest, with the log lines written while it exists."""

    def __init__(self, settings):
        self.router = make_app(settings)
        self.log_stream = capture_logs(settings.log_format)
        self.app = webtest.TestApp(self.router)

    @property
    def log_lines(self):
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines()]

    def use_moodle_client(self, **overrides):
        """Serve with a MoodleClient built from the same settings but ``overrides`` (say, a ``FakeTime``'s)."""
        registry = self.router.registry
        settings = registry.settings["lms_api.settings"]
        client = MoodleClient.from_settings(settings, settings.moodle_base_url, settings.moodle_token, **overrides)
        config = Configurator(registry=registry)  # the registry keeps pyramid_services' directives
        config.register_service(client, MoodleClient)
        config.commit()

    def get(self, path, token=None, **kwargs):
        return self.app.get(path, headers=_auth(token, kwargs), expect_errors=True, **kwargs)

    def post(self, path, body=None, token=None, **kwargs):
        return self.app.post_json(path, body, headers=_auth(token, kwargs), expect_errors=True, **kwargs)

    def patch(self, path, body=None, token=None, **kwargs):
        return self.app.patch_json(path, body, headers=_auth(token, kwargs), expect_errors=True, **kwargs)

    def delete(self, path, token=None, **kwargs):
        return self.app.delete(path, headers=_auth(token, kwargs), expect_errors=True, **kwargs)

    def upload(self, path, files, token=None, fields=(), **kwargs):
        """POST multipart: ``files`` are ``(field, filename, content)`` tuples."""
        return self.app.post(
            path,
            list(fields),
            upload_files=list(files),
            content_type="multipart/form-data",
            headers=_auth(token, kwargs),
            expect_errors=True,
            **kwargs,
        )


def _auth(token, kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def service(gateway, iface):
    """The service a request to ``gateway`` finds for ``iface`` now."""
    with prepare(registry=gateway.router.registry) as env:
        return env["request"].find_service(iface)
