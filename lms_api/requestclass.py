"""One request class for the whole app, holding every concern's request methods and properties, built once.

Each concern adds what a request offers (``request.id``, ``request.lms_settings``, ...) with
``config.add_request_method``. Pyramid's router puts those on each request as it is made, by making a class for that
request alone (``pyramid.util.InstancePropertyHelper``): a class built per request, for what never changes between
requests. Here the class is built once the configuration is committed, and the router makes every request of it. A
reified property still keeps its value on the request it was read from (``pyramid.decorator.reify`` stores it in the
instance), so each request computes its own.
"""

from __future__ import annotations

from pyramid.interfaces import IRequestExtensions, IRequestFactory
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.router import Router


def request_class(registry: Registry) -> type[Request]:
    """The request factory's class with the registry's request methods and properties on it."""
    base: type[Request] = registry.queryUtility(IRequestFactory, default=Request)
    extensions = registry.queryUtility(IRequestExtensions)
    if extensions is None:
        return base
    # As Pyramid's per-request class: the same name and module, and the interfaces of the class it extends.
    attributes = {**extensions.methods, **extensions.descriptors, "__module__": base.__module__}
    for name in ("__implemented__", "__provides__"):
        if hasattr(base, name):
            attributes[name] = getattr(base, name)
    return type(base.__name__, (base,), attributes)


def serve_one_request_class(router: Router) -> None:
    """Make ``router`` build every request from one :func:`request_class`, rather than a class per request.

    The router no longer puts the methods on a request it is handed: a subrequest (``invoke_subrequest``, which the
    gateway does not make) is to be made of ``router.request_factory`` too."""
    router.request_factory = request_class(router.registry)
    router.request_extensions = None  # on the class already
