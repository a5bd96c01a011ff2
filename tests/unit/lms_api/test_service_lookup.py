"""Services are registered with pyramid_services and found from its registry, with no container per request."""

import pytest
from pyramid import testing
from pyramid.request import Request, apply_request_extensions


class Clock:
    pass


class PerRequest:
    def __init__(self, request):
        self.request = request


@pytest.fixture
def make_request():
    with testing.testConfig() as config:
        config.include("lms_api.service_lookup")
        clock = Clock()
        config.register_service(clock, Clock)
        config.register_service_factory(lambda context, request: PerRequest(request), PerRequest)
        config.commit()

        def make():
            request = Request.blank("/")
            request.registry = config.registry
            apply_request_extensions(request)
            return request

        yield make, clock


def test_a_registered_service_is_found_without_a_container_for_the_request(make_request):
    make, clock = make_request
    request = make()

    assert request.find_service(Clock) is clock
    assert "services" not in request.__dict__  # pyramid_services' per-request container was never built


def test_a_service_factory_is_given_the_request(make_request):
    make, _ = make_request
    request = make()

    assert request.find_service(PerRequest).request is request


def test_an_unregistered_service_is_a_lookup_error(make_request):
    make, _ = make_request

    with pytest.raises(LookupError):
        make().find_service(Request)
