"""How the read cache answered each cached read, as the request's call log keeps it, and as ``Cache-Status`` (RFC 9211)
tells it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from lms_api.calllog import current_call_log

CACHE_NAME = "lms_api"
NO_CACHE_IGNORED = "no-cache-ignored"  # Cache-Status detail: no-cache without the scope cache:refresh


class Fetch(IntEnum):
    """How an answer was got, least cached last: the answer of a request is its least cached call's."""

    HIT = 0
    COLLAPSED = 1
    MISS = 2
    REFRESH = 3
    STALE = 4


@dataclass(frozen=True)
class CacheOutcome:
    fetch: Fetch
    ttl_s: int = 0  # seconds left (negative: past expiry) for hits and stale answers
    stored: bool = False
    group: str = field(default="", compare=False)  # for metrics

    def header(self, no_cache_ignored: bool = False) -> str:
        """The ``Cache-Status`` member for this answer (RFC 9211); ``no_cache_ignored``: the request asked for a
        fresh answer, which its token may not have, and a hit says so."""
        if self.fetch == Fetch.HIT:
            return f"{CACHE_NAME}; hit; ttl={self.ttl_s}" + (f"; detail={NO_CACHE_IGNORED}" if no_cache_ignored else "")
        if self.fetch == Fetch.STALE:
            return f"{CACHE_NAME}; hit; ttl={self.ttl_s}; detail=stale-if-error"
        if self.fetch == Fetch.COLLAPSED:
            return f"{CACHE_NAME}; fwd=uri-miss; collapsed"
        forwarded = "request" if self.fetch == Fetch.REFRESH else "uri-miss"
        return f"{CACHE_NAME}; fwd={forwarded}" + ("; stored" if self.stored else "")


def request_outcome(outcomes: list[CacheOutcome]) -> CacheOutcome | None:
    """One outcome for a request of several cached calls: the least cached, with the least time left."""
    if not outcomes:
        return None
    worst = max(outcome.fetch for outcome in outcomes)
    same = [outcome for outcome in outcomes if outcome.fetch == worst]
    return CacheOutcome(worst, min(outcome.ttl_s for outcome in same), all(outcome.stored for outcome in same))


def note(outcome: CacheOutcome) -> None:
    """Record how a cached read was answered in the call log of the request being handled."""
    current_call_log().cache.append(outcome)
