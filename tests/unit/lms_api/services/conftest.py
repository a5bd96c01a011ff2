"""Route services on a MoodleClient whose Moodle is mocked and offers every function the services call."""

import pytest

from tests.unit.mocked_moodle import ROUTE_FUNCTIONS, prime


@pytest.fixture
def moodle(make_client, rsps):
    client = make_client()
    prime(client, rsps, ROUTE_FUNCTIONS)
    return client
