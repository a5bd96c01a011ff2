"""How a write of many calls reports its progress, and is stopped between two calls (a background job cancelled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.errors import OUTCOME_PARTIAL

# Told the items applied so far and how many there are, after each write call; raises JobStopped to stop the write.
Progress = Callable[[int, int], None]


class JobStopped(Exception):
    """Raised by a :data:`Progress` callback: the write stops before its next call."""


def advanced(progress: Progress | None, done: int, total: int) -> bool:
    """Tell ``progress``; False when it asks the write to stop."""
    if progress is None:
        return True
    try:
        progress(done, total)
    except JobStopped:
        return False
    return True


def stopped(summary: str, *, applied_any: bool, **account: Any) -> ApiError:
    """409 ``jobcancelled``: the write stopped between two calls, with the account a failed call gives."""
    details = {**account, "outcome": OUTCOME_PARTIAL} if applied_any else account
    return ApiError(ErrorCode.JOB_CANCELLED, f"Cancelled between two Moodle calls: {summary}", details)
