"""The Moodle calls of the request being handled: the client records them, the request summary line and the audit
event read them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lms_api.cache import CacheOutcome


@dataclass
class CallRecord:
    """What one logical Moodle call cost; the request summary log line adds these up."""

    function: str
    ms: float = 0.0
    attempts: int = 0
    deadline: float = 0.0
    sent: bool = False  # an attempt went out: a write may have reached Moodle
    outcome: str = "error"  # "ok", or the error's code


@dataclass
class CallLog:
    calls: list[CallRecord] = field(default_factory=list)
    cache: list[CacheOutcome] = field(default_factory=list)  # how each cached read was answered

    @property
    def functions(self) -> list[str]:
        return [call.function for call in self.calls]

    @property
    def ms(self) -> float:
        return round(sum(call.ms for call in self.calls), 1)

    @property
    def retries(self) -> int:
        return sum(call.attempts - 1 for call in self.calls)


_call_log: ContextVar[CallLog | None] = ContextVar("moodle_call_log", default=None)


def current_call_log() -> CallLog:
    """The calls of the request being handled so far (an empty log outside :func:`recording_calls`)."""
    return _call_log.get() or CallLog()


@contextmanager
def recording_calls() -> Iterator[CallLog]:
    """Collect the Moodle calls made inside the block (one request) for its summary line."""
    call_log = CallLog()
    reset_token = _call_log.set(call_log)
    try:
        yield call_log
    finally:
        _call_log.reset(reset_token)
