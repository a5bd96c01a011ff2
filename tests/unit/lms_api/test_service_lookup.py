"""Services are registered with pyramid_services' directives and found by what they provide: the one registered, the
one that replaced it, a factory's made for the request asking; what it costs is the benchmark's to say."""

import pytest
from pyramid import testing
from pyramid.config import Configurator
from pyramid.request import Request, apply_request_extensions


class Clock:
    pass


class PerRequest:
    def __init__(self, request):
        self.request = request


CLOCK = Clock()


@pytest.fixture
def registry():
    with testing.testConfig(autocommit=False) as config:
        config.include("lms_api.service_lookup")
        config.register_service(CLOCK, Clock)
        config.register_service(Clock(), Clock, name="wall")
        config.register_service_factory(lambda context, request: PerRequest(request), PerRequest)
        config.commit()
        yield config.registry


def make_request(registry):
    request = Request.blank("/")
    request.registry = registry
    apply_request_extensions(request)
    return request


def swap(registry, service, iface, **options):
    """As a test replaces a service in a built app: a new configurator on its registry."""
    config = Configurator(registry=registry)
    config.register_service(service, iface, **options)
    config.commit()


def test_a_registered_service_is_found_by_what_it_provides_every_time(registry):
    first, second = make_request(registry), make_request(registry)

    found = first.find_service(Clock)

    assert found is CLOCK
    assert second.find_service(Clock) is found is first.find_service(Clock)
    assert first.find_service(Clock, name="wall") is not found


def test_a_service_swapped_after_the_app_was_built_is_the_one_found(registry):
    before = make_request(registry).find_service(Clock)
    replacement = Clock()

    swap(registry, replacement, Clock)

    assert make_request(registry).find_service(Clock) is replacement is not before
    assert make_request(registry).find_service(Clock, name="wall") is not replacement


def test_a_service_factory_makes_the_service_for_the_request_asking(registry):
    first, second = make_request(registry), make_request(registry)

    assert first.find_service(PerRequest).request is first
    assert second.find_service(PerRequest).request is second


def test_a_service_factory_is_called_at_each_lookup_not_kept_for_the_request(registry):
    """What sets this lookup apart from pyramid_services' own, which builds a container per request and keeps each
    factory's service in it: no service here is one per request, so none is kept."""
    request = make_request(registry)

    assert request.find_service(PerRequest) is not request.find_service(PerRequest)


def test_an_unregistered_service_is_a_lookup_error(registry):
    request = make_request(registry)

    with pytest.raises(LookupError):
        request.find_service(Request)
    with pytest.raises(LookupError):
        request.find_service(Clock, name="sundial")
