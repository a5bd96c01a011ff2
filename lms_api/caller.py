"""Who is calling, and through what: the one place that decides which forwarded headers are believed.

waitress passes ``X-Forwarded-*`` through untouched (``lms_api/server.py`` tells it not to judge them), and this
module believes them only from a peer in ``TRUSTED_PROXIES``. The client's address (rate limits, ``/metrics``) and
the scheme and host of every URL the gateway writes (``Location``) come from here, so an untrusted ``Host:
evil.example`` or ``X-Forwarded-For`` never changes what the gateway says or whom it counts.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from lms_api.settings import Settings

Networks = tuple[IPv4Network | IPv6Network, ...]
# A host as a browser writes it in a URL: a name or an IPv4 address, or an IPv6 address in brackets; a port from 1
# to 65535.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = re.compile(rf"(?:[A-Za-z0-9][A-Za-z0-9.-]{{0,252}}|\[[0-9A-Fa-f:.]{{2,45}}\])(?::{_PORT})?")
_SCHEMES = frozenset({"http", "https"})


def is_trusted(address: str, networks: Networks) -> bool:
    """Whether ``address`` is in one of ``networks`` (an address that is no IP address never is)."""
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


def is_operator(request: Request) -> bool:
    """Whether the caller is in ``METRICS_ALLOWED_NETWORKS``, the operators' networks: they read ``/metrics`` and how
    the gateway reaches Moodle. Judged on the client's address, so a proxy on the same host does not make every
    caller loopback."""
    networks = request.lms_settings.metrics_allowed_networks
    return is_trusted(client_address(request, request.lms_settings.trusted_proxies), networks)


def public_origin(request: Request) -> str | None:
    """The scheme and host callers reach the gateway by, when known: ``PUBLIC_URL``; else what a trusted proxy says
    it saw (``X-Forwarded-Host``, with ``X-Forwarded-Proto``); else None. The request's own ``Host`` never counts: any
    client may write it."""
    settings: Settings = request.lms_settings
    if settings.public_url:
        return settings.public_url
    if not is_trusted(request.remote_addr or "", settings.trusted_proxies):
        return None
    host = _last(request.headers.get("X-Forwarded-Host", ""))
    if not _HOST.fullmatch(host):
        return None
    scheme = _last(request.headers.get("X-Forwarded-Proto", "")).lower()
    return f"{scheme if scheme in _SCHEMES else request.scheme}://{host}"


def public_url(request: Request, path: str) -> str:
    """``path`` as an absolute URL when the public origin is known, else as it is: a path is a valid ``Location``
    (RFC 9110), which the browser resolves against the address it asked for."""
    origin = public_origin(request)
    return origin + path if origin else path


def _last(header: str) -> str:
    """The value the nearest proxy wrote: the last of a comma-separated list."""
    return header.rsplit(",", 1)[-1].strip()


class KeptLocationResponse(Response):  # type: ignore[misc]  # Pyramid ships no type information
    """A response whose ``Location`` is sent as the view set it. WebOb would make a path absolute with the request's
    ``Host``, which the client wrote. Its clean-up of such paths (tabs and line breaks dropped, a leading ``//``
    escaped) is not needed either: a ``Location`` here is always :func:`public_url` of a ``route_path``, whose
    placeholders Pyramid percent-escapes."""

    def _abs_headerlist(self, environ: dict[str, Any]) -> list[tuple[str, str]]:
        return list(self.headerlist)


def includeme(config: Configurator) -> None:
    config.add_request_method(public_url, "public_url")
    config.set_response_factory(lambda request: KeptLocationResponse())
