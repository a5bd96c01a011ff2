"""Fixtures of the tests that call the gateway under webtest, used by no other folder."""

import pytest

from moodle_sandbox.server import start_sandbox


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
