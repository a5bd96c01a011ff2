"""View unit tests: the real view classes, called as the router calls them (their operation's deriver loads the input
and dumps the answer), with the Moodle client replaced through its service seam by an autospec fake, so a fake cannot
drift from the real client's signatures.

The read cache asks the client for ``answer`` (the parsed answer and its bytes) and everything else goes to ``call``:
``support.answering`` sets up both from one table, and a test asserts on the method production calls."""

import json
from unittest.mock import create_autospec

import pytest
from pyramid import testing
from pyramid.interfaces import IRouteRequest
from pyramid.request import Request, apply_request_extensions
from zope.interface import alsoProvides

from lms_api.moodle.client import MoodleClient
from lms_api.security import Identity
from lms_api.settings import load_settings
from tests.support.events import RecordingEvents

DEVELOPMENT = {"lms_api.environment": "development"}


@pytest.fixture
def moodle():
    client = create_autospec(MoodleClient, instance=True)
    client.max_input_vars = 5000
    return client


@pytest.fixture
def identity():
    return Identity(sub="ada", scopes=frozenset({"admin"}), moodle_userid=3)


@pytest.fixture
def pyramid_config(moodle, identity):
    settings = load_settings(DEVELOPMENT, {})
    with testing.testConfig(settings={"lms_api.settings": settings}, autocommit=False) as config:
        config.include("lms_api.service_lookup")
        config.include("lms_api.settings")
        config.include("lms_api.caller")
        config.include("lms_api.drafts")
        config.include("lms_api.audit")
        config.register_service(moodle, MoodleClient)
        config.registry.events = RecordingEvents()  # where the writes' events go
        config.include("lms_api.cache")  # views reach the client through the read cache
        config.include("lms_api.views")  # the view classes, their routes and the operations' deriver
        config.testing_securitypolicy(identity=identity)
        config.commit()
        yield config


@pytest.fixture
def make_request(pyramid_config):
    """A request as the router hands it to a view: registry, request methods, its route and matchdict."""

    def make(path="/", method="GET", json_body=None, matchdict=None, route=None, **kwargs):
        request = Request.blank(path, method=method, **kwargs)
        if json_body is not None:
            request.body = json.dumps(json_body).encode()
            request.content_type = "application/json"
        request.registry = pyramid_config.registry
        apply_request_extensions(request)
        request.matchdict = matchdict or {}
        if route is not None:
            alsoProvides(request, pyramid_config.registry.getUtility(IRouteRequest, name=route))
        return request

    return make
