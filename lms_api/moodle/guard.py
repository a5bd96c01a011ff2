"""What stands between the gateway and a struggling Moodle: a bulkhead and a circuit breaker, one each per process.

The bulkhead caps the Moodle calls in flight, so a slow Moodle holds at most that many server threads and never
sees more calls than it was given; a call that finds no slot soon is refused rather than queued behind the others.
The breaker stops sending calls after repeated transport failures and lets one trial call through after a
cool-down, so a Moodle that is down is not hammered while it recovers and callers are told at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum

import structlog

log = structlog.get_logger("lms_api.moodle")


class BulkheadFull(Exception):
    """No slot freed within the queue timeout; nothing was sent."""


class BreakerOpen(Exception):
    """The breaker refuses calls for ``retry_after_s`` more seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"open for {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Bulkhead:
    """At most ``limit`` Moodle calls in flight at once in this process."""

    def __init__(self, limit: int, queue_timeout_s: float) -> None:
        self.limit = limit
        self._queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._in_use = 0
        self.refused = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextmanager
    def slot(self, wait_s: float) -> Iterator[None]:
        """Hold a slot for one attempt; wait at most the queue timeout (and never past ``wait_s``)."""
        if not self._slots.acquire(timeout=max(0.0, min(self._queue_timeout_s, wait_s))):
            with self._lock:
                self.refused += 1
            raise BulkheadFull
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1
            self._slots.release()


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Opens after ``failures`` transport failures in a row; after ``cooldown_s`` one trial call decides."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        """Past its cool-down an open breaker reads half-open: the next call is let through as the trial."""
        if self._state == BreakerState.OPEN and self._clock() >= self._opened_at + self._cooldown_s:
            return BreakerState.HALF_OPEN
        return self._state

    def retry_after_s(self) -> int:
        """Whole seconds until a trial call may go through (at least 1 while the breaker is not closed)."""
        if self._state == BreakerState.CLOSED:
            return 0
        return max(1, math.ceil(self._opened_at + self._cooldown_s - self._clock()))

    def admit(self) -> None:
        """Let one call through, or raise :class:`BreakerOpen`; after the cool-down the first caller is the trial."""
        with self._lock:
            if self._state == BreakerState.CLOSED:
                return
            if self._state == BreakerState.OPEN and self._clock() >= self._opened_at + self._cooldown_s:
                self._change(BreakerState.HALF_OPEN)
            if self._state == BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            raise BreakerOpen(self.retry_after_s())

    def succeeded(self) -> None:
        """Moodle answered (an error answer of its own counts: it is up)."""
        with self._lock:
            self._failures = 0
            self._trial_running = False
            if self._state != BreakerState.CLOSED:
                self._change(BreakerState.CLOSED)

    def failed(self, cause: Mapping[str, str] | None = None) -> None:
        """A transport failure: timeout, refused, reset, HTTP 502/503/504; ``cause`` (its fields) is logged should the
        breaker open on it, so the pause is never reported without its reason."""
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._state == BreakerState.HALF_OPEN or (
                self._state == BreakerState.CLOSED and self._failures >= self._threshold
            ):
                self._opened_at = self._clock()
                self._change(BreakerState.OPEN, cause or {})

    def abandoned(self) -> None:
        """An admitted call was not sent after all (the bulkhead refused it): the next caller may be the trial."""
        with self._lock:
            self._trial_running = False

    def _change(self, state: BreakerState, cause: Mapping[str, str] | None = None) -> None:
        reopened = self._state == BreakerState.HALF_OPEN
        self._state = state
        if state == BreakerState.OPEN:
            # A warning when Moodle starts failing; a failed trial after each cool-down only keeps it open (info).
            (log.info if reopened else log.warning)(
                "moodle.breaker_opened",
                failures=self._failures,
                cooldown_s=self._cooldown_s,
                note="calls to Moodle are refused until a trial call succeeds",
                **(cause or {}),
            )
        elif state == BreakerState.HALF_OPEN:
            log.info("moodle.breaker_half_open", note="one trial call goes to Moodle")
        else:
            log.info("moodle.breaker_closed")
