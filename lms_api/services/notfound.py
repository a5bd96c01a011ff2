"""The 404 for ids Moodle does not have: one shape for courses, users and categories."""

from __future__ import annotations

from lms_api.errors import ApiError, ErrorCode

# The message names this many ids; ``details`` lists them all.
MAX_NAMED = 20


def missing_ids(noun: str, plural: str, ids: list[int]) -> str:
    """``course with id 7`` or ``courses with ids 7, 8``, naming at most MAX_NAMED ids."""
    named = ", ".join(map(str, ids[:MAX_NAMED]))
    if len(ids) > MAX_NAMED:
        named += f" and {len(ids) - MAX_NAMED} more"
    return f"{noun} with id {named}" if len(ids) == 1 else f"{plural} with ids {named}"


def not_found(code: ErrorCode, noun: str, plural: str, ids: list[int]) -> ApiError:
    """404 ``code`` with ``details.missing_<plural>``: every id asked for that Moodle does not have."""
    return ApiError(code, f"No {missing_ids(noun, plural, ids)} in Moodle", {f"missing_{plural}": ids})
