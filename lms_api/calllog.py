"""The Moodle calls of the request being handled: the client records them, as they are made, into the log that this
module's tween opens for each request and hands over as ``request.moodle_calls``; the request summary line, the
metrics, the audit event and ``Cache-Status`` read it there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import INGRESS

if TYPE_CHECKING:
    from lms_api.cache import CacheOutcome


@dataclass
class CallRecord:
    """What one logical Moodle call cost; the request summary log line adds these up."""

    function: str
    writes: bool  # the function changes Moodle (the function table's word)
    ms: float = 0.0
    attempts: int = 0
    deadline: float = 0.0
    # An attempt may have reached the function in Moodle: a write may have been applied. False when nothing went
    # out, or when the answer says the function never ran (a connection refused, Moodle's maintenance answer).
    sent: bool = False
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
    """Where the client records a call: the log of the request being handled (a throwaway one outside a request,
    as when the site info is kept fresh between requests)."""
    return _call_log.get() or CallLog()


@contextmanager
def recording_calls() -> Iterator[CallLog]:
    """Collect the Moodle calls made inside the block (one request, in the tween below)."""
    call_log = CallLog()
    reset_token = _call_log.set(call_log)
    try:
        yield call_log
    finally:
        _call_log.reset(reset_token)


# Every tween that reads ``request.moodle_calls`` once its handler returns: the call log's tween is over each of them.
# A name here that no tween has would order nothing, silently: tests/functional/test_metrics.py checks each is there.
READERS = (
    "lms_api.logging.request_tween_factory",  # the summary line
    "lms_api.metrics.metrics_tween_factory",
    "lms_api.audit.audit_tween_factory",
    "lms_api.cache.cache_tween_factory",  # Cache-Status
)


def call_log_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """``request.moodle_calls``: the Moodle calls the request made and how its cached reads were answered, complete
    once the handler returns, error answers included."""

    def tween(request: Request) -> Response:
        with recording_calls() as calls:
            request.moodle_calls = calls
            return handler(request)

    return tween


def includeme(config: Configurator) -> None:
    # Under the UTF-8 guard when there is one: a path it refuses has made no call to log.
    config.add_tween(
        "lms_api.calllog.call_log_tween_factory",
        under=("lms_api.hygiene.encoding_tween_factory", INGRESS),
        over=READERS,
    )
