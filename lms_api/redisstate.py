"""State shared by replicas in one Redis, and what to do while it does not answer.

Rate limits and the read cache keep their state in Redis when ``REDIS_URL`` is set. When Redis fails they use
their in-process fallback for a few seconds, then try Redis again; the change is logged once each way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
import structlog

log = structlog.get_logger("lms_api.redis")

RETRY_AFTER_S = 5.0


def redis_client(url: str) -> redis.Redis:
    """Short timeouts: a request never waits long on a Redis that went away."""
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_on_timeout=False)


class RedisLink:
    """One Redis, and whether to use it now; ``purpose`` names the user in log lines (``ratelimit``, ``cache``)."""

    def __init__(
        self, client: redis.Redis, purpose: str, fallback_note: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self._purpose = purpose
        self._fallback_note = fallback_note
        self._clock = clock
        self._down_until: float | None = None
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        """False for a few seconds after a failure: the caller uses its in-process fallback meanwhile."""
        return self._down_until is None or self._clock() >= self._down_until

    @property
    def down(self) -> bool:
        return self._down_until is not None

    def went_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_until is None:
                log.warning(f"{self._purpose}.redis_unavailable", error=type(error).__name__, note=self._fallback_note)
            self._down_until = self._clock() + RETRY_AFTER_S

    def answered(self) -> bool:
        """Note that Redis answered; True when it had been down until now."""
        if self._down_until is None:
            return False
        with self._lock:
            if self._down_until is None:
                return False
            self._down_until = None
        log.info(f"{self._purpose}.redis_restored")
        return True

    def answers(self) -> bool:
        """Ask Redis now (for readiness). A failure is noted; Redis coming back is left for the link's users to
        notice, since they act on it (the read cache drops what it kept in the process meanwhile)."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            self.went_down(error)
            return False
        return True
