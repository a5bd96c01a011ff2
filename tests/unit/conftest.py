"""Fixtures for MoodleClient tests against a mocked Moodle (``responses``, see mocked_moodle) with a fake clock."""

import pytest
import responses

from lms_api.moodle.client import MoodleClient
from tests.support.timing import FakeClock
from tests.unit.mocked_moodle import BASE_URL, TOKEN, PoolAnsweredByResponses


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_client(clock, sleeps):
    def fake_sleep(seconds):
        sleeps.append(seconds)
        clock.advance(seconds)

    def make(**overrides):
        options = {
            "timeout_s": 2.0,
            "max_retries": 2,
            "functions_ttl_s": 300,
            "sleep": fake_sleep,
            "clock": clock,
            "jitter": lambda: 1.0,
            **overrides,
        }
        return MoodleClient(BASE_URL, TOKEN, **options)

    return make


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def rsps(monkeypatch):
    """Moodle as ``responses`` answers it, for every MoodleClient of the test."""
    monkeypatch.setattr(MoodleClient, "_pool", lambda client: PoolAnsweredByResponses(client.base_url))
    with responses.RequestsMock() as mock:
        yield mock
