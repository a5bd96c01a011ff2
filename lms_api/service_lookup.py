"""Services: registered with pyramid_services, found without building a container per request.

pyramid_services answers ``request.find_service`` from a ``wired`` container that each request builds on first use,
with a lookup registry of its own, a cost a cached read paid on every request (README's Benchmarks). No service
here depends on the request's traversal context or needs to be one instance per request, so ``find_service`` asks
pyramid_services' registry for the registered factory, which is a cached lookup, and calls it: a factory service is
made at each lookup. Services are registered with pyramid_services' own directives (``config.register_service``,
``config.register_service_factory``), which is also how tests replace them. Include this module, not
pyramid_services itself: its ``find_service`` replaces pyramid_services' only for the module that includes it.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid_services import find_service_factory


def find_service(request: Request, iface: Any, context: Any = None, name: str = "") -> Any:
    """The service registered for ``iface`` (and ``context`` and ``name``); ``LookupError`` when there is none."""
    return find_service_factory(request, iface, context=context, name=name)(context, request)


def includeme(config: Configurator) -> None:
    config.include("pyramid_services")
    # Included by its includer, pyramid_services' own request method of the same name is overridden by this one.
    config.add_request_method(find_service)
