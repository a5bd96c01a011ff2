"""Who is calling, and through what: the one place that decides which forwarded headers are believed.

waitress passes ``X-Forwarded-*`` through untouched (the ini files tell it not to judge them), and this module
believes them only from a peer in ``TRUSTED_PROXIES``. The client's address (rate limits, ``/metrics``) and the
scheme and host of every absolute URL the gateway writes (``Location``) come from here, so an untrusted
``Host: evil.example`` or ``X-Forwarded-For`` never changes what the gateway says or whom it counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any
from urllib.parse import urlsplit

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import INGRESS

from lms_api.settings import Settings

Networks = tuple[IPv4Network | IPv6Network, ...]
# A host as a browser writes it in a URL: a name or an IPv4 address, or an IPv6 address in brackets; a port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.?)*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def is_trusted(address: str, networks: Networks) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def client_address(request: Request, trusted_proxies: Networks) -> str:
    """The caller's address: the TCP peer, or, when that peer is a trusted proxy, the right-most
    ``X-Forwarded-For`` entry that is not a trusted proxy (entries left of it were written by the client)."""
    address = request.remote_addr or "unknown"
    if not trusted_proxies:
        return address
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    while is_trusted(address, trusted_proxies) and hops:
        address = hops.pop()
    return address


def public_scheme_and_host(environ: MutableMapping[str, Any], settings: Settings) -> tuple[str, str]:
    """The scheme and host callers reach the gateway by: ``PUBLIC_URL``; else what a trusted proxy says it saw
    (``X-Forwarded-Proto``, ``X-Forwarded-Host``); else the address the server listens on, never the request's own
    ``Host``, which any client may write."""
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        return parts.scheme, parts.netloc
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    host = _listening_host(environ, scheme)
    if is_trusted(str(environ.get("REMOTE_ADDR", "")), settings.trusted_proxies):
        forwarded_proto = _last(environ.get("HTTP_X_FORWARDED_PROTO", "")).lower()
        forwarded_host = _last(environ.get("HTTP_X_FORWARDED_HOST", ""))
        if forwarded_proto in _SCHEMES:
            scheme = forwarded_proto
        if _HOST.fullmatch(forwarded_host):
            host = forwarded_host
    return scheme, host


def _last(header: str) -> str:
    """The value the nearest proxy wrote: the last of a comma-separated list."""
    return header.rsplit(",", 1)[-1].strip()


def _listening_host(environ: MutableMapping[str, Any], scheme: str) -> str:
    name, port = str(environ.get("SERVER_NAME", "localhost")), str(environ.get("SERVER_PORT", ""))
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return name if not port or port == _DEFAULT_PORTS.get(scheme) else f"{name}:{port}"


def public_url_tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    """Outermost: the request's scheme and host become the public ones before anything builds a URL from them,
    Pyramid's ``route_url`` and WebOb's absolute ``Location`` included."""
    settings: Settings = registry.settings["lms_api.settings"]

    def tween(request: Request) -> Response:
        scheme, host = public_scheme_and_host(request.environ, settings)
        request.environ["wsgi.url_scheme"] = scheme
        request.environ["HTTP_HOST"] = host
        return handler(request)

    return tween


def includeme(config: Configurator) -> None:
    config.add_tween("lms_api.caller.public_url_tween_factory", under=INGRESS)
