"""Fixtures that tests in more than one folder use, and what applies to every test. What tests import lives in
``tests/support``; a folder's own fixtures live in its conftest."""

import os

import pytest
import redis
import structlog
from hypothesis import settings as hypothesis_settings

from moodle_sandbox.server import start_sandbox
from tests.support.gateway import Gateway, release_captured_logs, settings_for
from tests.support.sandbox import clear_faults
from tests.support.servers import free_port, start_redis_server
from tests.support.timing import FakeTime

# Property tests: bounded so `make test` stays fast; the same examples on every CI run, fresh ones elsewhere.
hypothesis_settings.register_profile("dev", max_examples=60, deadline=None)
hypothesis_settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None)
hypothesis_settings.register_profile("thorough", max_examples=2000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _clear_log_context():
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _release_captured_logs():
    yield
    release_captured_logs()


@pytest.fixture(scope="session")
def sandbox():
    server = start_sandbox()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clear_sandbox_faults(request):
    yield
    if "sandbox" in request.fixturenames:
        clear_faults(request.getfixturevalue("sandbox"))


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
def unused_port():
    return free_port()
