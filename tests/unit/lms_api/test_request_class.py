"""One request class, built once: the request methods and properties Pyramid would put on each request, as before."""

import itertools

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.decorator import reify
from pyramid.events import NewRequest
from pyramid.interfaces import IRequest
from pyramid.request import Request

from lms_api.requestclass import request_class, serve_one_request_class


def app(one_class):
    """An app whose view answers what its request offers, and the requests it made."""
    counted = itertools.count()
    made = []
    config = Configurator()
    config.add_request_method(lambda request: next(counted), "reified", reify=True)
    config.add_request_method(lambda request: next(counted), "recomputed", property=True)
    config.add_request_method(lambda request, word: f"{word} {request.path}", "say")
    config.add_subscriber(lambda event: made.append(event.request), NewRequest)
    config.add_route("look", "/look/{name}")
    config.add_view(
        lambda request: {
            "reified": [request.reified, request.reified],
            "recomputed": [request.recomputed, request.recomputed],
            "said": request.say("hello"),
            "is_request": IRequest.providedBy(request),
        },
        route_name="look",
        renderer="json",
    )
    config.commit()
    router = config.make_wsgi_app()
    if one_class:
        serve_one_request_class(router)
    return webtest.TestApp(router), made


@pytest.mark.parametrize("one_class", [True, False], ids=["one class", "Pyramid's class per request"])
def test_request_methods_and_properties_answer_as_pyramid_s_own(one_class):
    client, _ = app(one_class)
    first, second = client.get("/look/a").json, client.get("/look/b").json

    assert first["reified"][0] == first["reified"][1]  # computed once for the request
    assert second["reified"][0] == second["reified"][1] != first["reified"][0]  # and anew for the next one
    assert first["recomputed"][0] != first["recomputed"][1]  # a property: computed each time it is read
    assert (first["said"], second["said"]) == ("hello /look/a", "hello /look/b")  # a method, bound to its request
    assert first["is_request"] and second["is_request"]


def test_one_class_made_before_any_request_serves_every_request():
    pyramid_s, made_by_pyramid = app(one_class=False)
    client, made = app(one_class=True)
    for name in ("a", "b", "c"):
        pyramid_s.get(f"/look/{name}")
        client.get(f"/look/{name}")

    assert len({type(request) for request in made_by_pyramid}) == 3  # what it saves: a class built per request
    assert {type(request) for request in made} == {client.app.request_factory}
    one = client.app.request_factory
    assert issubclass(one, Request) and one is not Request
    assert isinstance(vars(one)["reified"], reify)  # on the class, the property; each value on its own request
    assert len({request.__dict__["reified"] for request in made}) == 3


def test_without_request_methods_the_request_class_is_pyramid_s():
    config = Configurator()
    config.commit()

    assert request_class(config.registry) is Request
