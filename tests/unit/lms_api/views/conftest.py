"""View unit tests: the real view functions with a DummyRequest-like request, and the Moodle client replaced through
its service seam by an autospec fake, so a fake cannot drift from the real client's signatures."""

import json
from unittest.mock import create_autospec

import pytest
from pyramid import testing
from pyramid.request import Request, apply_request_extensions

from lms_api.moodle.client import Answer, MoodleClient
from lms_api.security import Identity
from lms_api.settings import load_settings

DEVELOPMENT = {"lms_api.environment": "development"}


@pytest.fixture
def moodle():
    client = create_autospec(MoodleClient, instance=True)
    client.max_input_vars = 5000
    # The read cache asks for answers with their bytes: give it what the test sets up for call and site_info.
    client.answer.side_effect = lambda function, params=None: _with_body(client.call(function, params))
    client.site_info_answer.side_effect = lambda: _with_body(client.site_info())
    return client


def _with_body(value):
    return Answer(value, json.dumps(value).encode())


@pytest.fixture
def identity():
    return Identity(sub="ada", scopes=frozenset({"admin"}), moodle_userid=3)


@pytest.fixture
def pyramid_config(moodle, identity):
    settings = load_settings(DEVELOPMENT, {})
    with testing.testConfig(settings={"lms_api.settings": settings}) as config:
        config.include("lms_api.service_lookup")
        config.include("lms_api.settings")
        config.include("lms_api.caller")
        config.include("lms_api.drafts")
        config.include("lms_api.audit")
        config.register_service(moodle, MoodleClient)
        config.include("lms_api.cache")  # read views reach the client through the read cache
        config.testing_securitypolicy(identity=identity)
        yield config


@pytest.fixture
def make_request(pyramid_config):
    """A request as the router hands it to a view: registry, request methods and the route's matchdict."""

    def make(path="/", method="GET", json_body=None, matchdict=None, **kwargs):
        request = Request.blank(path, method=method, **kwargs)
        if json_body is not None:
            request.body = json.dumps(json_body).encode()
            request.content_type = "application/json"
        request.registry = pyramid_config.registry
        apply_request_extensions(request)
        request.matchdict = matchdict or {}
        return request

    return make
