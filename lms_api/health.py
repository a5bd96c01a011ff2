"""Liveness, readiness, and the site info kept known so that readiness holds and no request waits for it.

``/healthz`` says the process answers; ``/readyz`` says it can serve: the breaker is not open and the token's
function list is known, and, while Moodle cannot be reached, why (the cause of the last failed call). Neither calls
Moodle, needs a token or counts against a rate limit, so a load balancer's
probe keeps answering while Moodle struggles, and nobody restarts a gateway for Moodle's trouble.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.router import Router
from pyramid.scripting import prepare
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.cache import ReadCache, RedisStore
from lms_api.caller import is_operator
from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import MoodleClient, MoodleUnreachable
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import MoodleFunction
from lms_api.moodle.guard import BreakerState
from lms_api.redisstate import no_request_snapshot
from lms_api.views import ENVELOPE_RENDERER

log = structlog.get_logger("lms_api.health")

REFRESH_AHEAD = 0.8  # of the shorter of the function list's and the cached site info's lifetimes
RETRY_S = 5.0


def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok"}


def readyz(request: Request) -> dict[str, Any]:
    """200 when the gateway can serve; else 503 ``notready`` saying why. Redis is asked; Moodle never is."""
    client: MoodleClient = request.find_service(MoodleClient)
    cache: ReadCache = request.find_service(ReadCache)
    state: dict[str, Any] = {
        "breaker": client.breaker.state.value,
        "site_info": "known" if client.knows_functions else "unknown",
        "moodle_calls_in_flight": client.bulkhead.in_use,
        "cache": cache.store.name,
    }
    if isinstance(cache.store, RedisStore):
        state["redis"] = "answers" if cache.store.link.answers() else "unreachable (serving from this process)"
    state["jobs"] = request.registry.jobs.readiness()
    state["events"] = request.registry.events.readiness()
    unreachable = client.unreachable
    # /readyz needs no token: how the gateway reaches Moodle (its URL, the hosts and addresses in the reason) is told
    # only to the operators' networks; anyone else learns the kind of failure.
    operator = is_operator(request)
    if unreachable is not None:
        state["moodle"] = (
            {"url": client.public_url, **unreachable.fields()} if operator else {"cause": unreachable.kind.value}
        )
    reasons = []
    if client.breaker.state == BreakerState.OPEN:
        reasons.append("the circuit breaker is open: Moodle failed repeatedly")
    if not client.knows_functions:
        reasons.append("the site info has not been read from Moodle yet")
    if reasons and unreachable is not None:
        reasons.append(
            f"Moodle at {client.public_url} cannot be reached ({unreachable.kind}: {unreachable.reason})"
            if operator
            else f"Moodle cannot be reached ({unreachable.kind})"
        )
    if reasons:
        raise ApiError(ErrorCode.NOT_READY, "Not ready: " + "; ".join(reasons), state)
    return {"status": "ready", **state}


class SiteInfoRefresher:
    """Reads the site info now and again ahead of its expiry, in a daemon thread, into the client and the cache.

    A failed read is retried every ``retry_s``, and a run of failures is one warning, not one per retry: Moodle
    unreachable is the client's ``moodle.unreachable`` (with its cause and URL, again only when the cause changes);
    any other failure (Moodle refused the token, answered something else) is ``siteinfo.refresh_failed``, again
    only when its code changes. The first read that succeeds after failures says so once, with their count.
    """

    def __init__(self, client: MoodleClient, cache: ReadCache, interval_s: float, retry_s: float = RETRY_S) -> None:
        self._client = client
        self._cache = cache
        self.interval_s = interval_s
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._failed_reads = 0
        self._warned_code: str | None = None

    def start(self) -> SiteInfoRefresher:
        threading.Thread(target=self._run, name="site-info-refresher", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> float:
        """Read the site info once; answer how long to wait before the next read."""
        try:
            # The client keeps the function list from the answer; the cache keeps the answer unless its group was
            # dropped while it was fetched.
            self._cache.fetch_and_store(
                MoodleFunction.SITE_INFO, {}, lambda: self._client.answer(MoodleFunction.SITE_INFO)
            )
        except MoodleError as error:
            self._failed(error)
            return self._retry_s
        if self._failed_reads:
            log.info("siteinfo.refreshed", after_failed_reads=self._failed_reads)
            self._failed_reads, self._warned_code = 0, None
        return self.interval_s

    def _failed(self, error: MoodleError) -> None:
        self._failed_reads += 1
        if isinstance(error, MoodleUnreachable) or str(error.code) == self._warned_code:
            return  # the client has said why Moodle cannot be reached; a repeat says nothing new
        self._warned_code = str(error.code)
        log.warning(
            "siteinfo.refresh_failed",
            error_code=self._warned_code,
            error_message=error.message,
            moodle_base_url=self._client.public_url,
            retry_in_s=self._retry_s,
            note="logged again only when the error changes",
        )

    def _run(self) -> None:
        no_request_snapshot()
        delay = 0.0
        while not self._stop.wait(delay):
            delay = self.refresh()


def keep_site_info_fresh(app: Router) -> SiteInfoRefresher:
    """Start refreshing the site info of a built app (a served gateway: tests that build apps do not)."""
    # Found as a request finds them, with the request Pyramid makes for code outside one (a script's): whatever
    # is registered for the client and the cache, a service or a factory of the request, is what is refreshed.
    with prepare(registry=app.registry) as env:
        client: MoodleClient = env["request"].find_service(MoodleClient)
        cache: ReadCache = env["request"].find_service(ReadCache)
    settings = app.registry.settings["lms_api.settings"]
    lifetime = settings.moodle_functions_ttl_s
    if cache.caches(MoodleFunction.SITE_INFO):
        lifetime = min(lifetime, cache.ttl_s(MoodleFunction.SITE_INFO))
    return SiteInfoRefresher(client, cache, lifetime * REFRESH_AHEAD).start()


def includeme(config: Configurator) -> None:
    config.add_route("healthz", "/healthz")
    config.add_route("readyz", "/readyz")
    for name, view in (("healthz", healthz), ("readyz", readyz)):
        config.add_view(
            view, route_name=name, request_method="GET", permission=NO_PERMISSION_REQUIRED, renderer=ENVELOPE_RENDERER
        )
