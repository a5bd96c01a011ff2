import datetime
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import redis
import requests
import structlog
import webtest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import settings as hypothesis_settings
from pyramid.config import Configurator

from lms_api.config import make_app
from lms_api.logging import log_formatter
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.encoding import encode_params
from lms_api.settings import load_settings
from moodle_sandbox.server import Fault, start_sandbox

# Property tests: bounded so `make test` stays fast; the same examples on every CI run, fresh ones elsewhere.
hypothesis_settings.register_profile("dev", max_examples=60, deadline=None)
hypothesis_settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None)
hypothesis_settings.register_profile("thorough", max_examples=2000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

ROOT = Path(__file__).resolve().parents[1]  # the repository
GOLDEN_DIR = ROOT / "tests" / "moodle_golden"  # answers recorded from a real Moodle 5.0
JWT_TEST_SECRET = "test-secret-0123456789-abcdefghij-KLMNOPQRST-0123456789-abcdefghijklmn"
ALL_SCOPES = "siteinfo:read courses:read courses:write users:read enrol:write notifications:read files:write"


@pytest.fixture(autouse=True)
def _clear_log_context():
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def sandbox():
    server = start_sandbox()
    yield server
    server.stop()


def start_redis_server(port=None):
    """A throw-away ``redis-server`` on ``port`` (default: a free one), no persistence; returns (process, url)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: the rate-limit tests need a real Redis (apt install redis-server)")
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return process, url
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url():
    """``REDIS_URL`` when given (CI with a service), else a redis-server of the test run's own."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    process, url = start_redis_server()
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def module_redis_url():
    """A redis-server of the test module alone: a shared REDIS_URL must not be flushed, nor its generations bumped."""
    process, url = start_redis_server()
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def empty_redis(module_redis_url):
    """An empty Redis for each test: no entry, generation, lock or count of another test."""
    redis.Redis.from_url(module_redis_url).flushdb()
    return module_redis_url


@pytest.fixture
def own_redis():
    """A redis-server this test may kill and restart."""
    process, url = start_redis_server()
    yield process, url
    if process.poll() is None:
        process.terminate()
        process.wait(10)


@pytest.fixture
def make_sandbox():
    """Sandboxes with their own options (service functions, max_input_vars, ...), stopped after the test."""
    started = []

    def start(**options):
        server = start_sandbox(**options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _clear_sandbox_faults(request):
    yield
    if "sandbox" in request.fixturenames:
        server = request.getfixturevalue("sandbox")
        with server.state_lock:
            server.faults.clear()


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


@pytest.fixture(autouse=True)
def _release_captured_logs():
    yield
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
        """Serve with a MoodleClient built from the same settings but ``overrides`` (say, a :class:`FakeTime`)."""
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


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class FakeTime:
    """A clock that runs with real time plus every sleep taken on it; a sleep returns at once."""

    def __init__(self):
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)

    def clock(self):
        return time.monotonic() + sum(self.slept)


def _auth(token, kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.fixture
def make_gateway(sandbox):
    """Gateways on the sandbox whose backoff sleeps return at once (their deadlines still hold)."""

    def build(base_url=None, token=None, **environ):
        environ.setdefault("MOODLE_TIMEOUT_MS", "2000")
        gateway = Gateway(settings_for(base_url or sandbox.url, token or sandbox.site.token, **environ))
        time = FakeTime()
        gateway.use_moodle_client(sleep=time.sleep, clock=time.clock)
        return gateway

    return build


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()


def mint(scope=ALL_SCOPES, sub="user-1", secret=JWT_TEST_SECRET, algorithm="HS256", ttl=3600, **claims):
    """A caller token; its hour outlasts a test run, since many are minted when a test module is imported."""
    now = int(time.time())
    payload = {"sub": sub, "scope": scope, "iat": now, "exp": now + ttl, **claims}
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def moodle_call(server, function, **params):
    """Call the sandbox directly, as Moodle's REST server, to check its state behind the gateway's back."""
    form = {"wstoken": server.site.token, "wsfunction": function, "moodlewsrestformat": "json"}
    response = requests.post(server.url + "/webservice/rest/server.php", data=[*form.items(), *encode_params(params)])
    return response.json()


def sandbox_calls(server):
    with server.state_lock:
        return dict(server.calls)


def queue_fault(server, **fault):
    with server.state_lock:
        server.faults.append(Fault(**fault))


def join(threads):
    """Wait for ``threads`` to end; fail if one is still running after 10 s."""
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def eventually(condition, what, seconds=5.0):
    """Wait until ``condition()`` holds; fail naming ``what`` if it has not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.005)


def free_port():
    """A port nothing listens on (the system picked it, then it was let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unused_port():
    return free_port()


def self_signed_certificate(folder, name):
    """A self-signed certificate for the host ``name`` and its key, as ``<name>.pem`` and ``<name>.key`` in
    ``folder``; answers both paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path
