"""Real processes on free ports: ``pserve`` with the ini files and ``lms-api sandbox``, stopped after the test."""

import pytest

from tests.support.processes import Processes


@pytest.fixture
def spawn(tmp_path):
    processes = Processes(tmp_path)
    yield processes
    processes.stop_all()


@pytest.fixture
def standalone_sandbox(spawn):
    """``lms-api sandbox`` as its own process: ``start(token)`` answers its base URL."""
    return spawn.sandbox
