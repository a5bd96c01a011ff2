"""Embedded event engines made by a test, closed after it (each Redis one has a listener thread), with loggers of
the test's own so ``capture_logs`` sees their lines."""

import pytest
import structlog

from lms_api import redisstate
from lms_api.events import embedded


@pytest.fixture(autouse=True)
def _loggers_of_this_test(monkeypatch):
    monkeypatch.setattr(embedded, "log", structlog.get_logger("lms_api.events"))
    monkeypatch.setattr(redisstate, "log", structlog.get_logger("lms_api.redis"))


@pytest.fixture
def make_engine():
    made = []

    def make(max_streams=4, heartbeat_s=30, keep_s=300, **options):
        engine = embedded.EmbeddedEvents(max_streams, heartbeat_s, keep_s, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()
