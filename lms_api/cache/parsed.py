"""Shared reads' answers (``MoodleFunction.shared``: the site info) as parsed from cache entries: a hit on the same
stored answer is the same object, parsed once, within a byte budget taken from the in-process cache's memory."""

from __future__ import annotations

import sys
from typing import Any

from lms_api.jsoncodec import loads
from lms_api.moodle.client import DerivedAnswers

# The share of CACHE_MAX_MB kept for parsed answers, the rest going to entries: the process's cache stays within the
# memory its operator gave it, and a shared answer is few keys, so a small share holds them all.
PARSED_SHARE_OF_CACHE = 1 / 8
# What a remembered answer costs per byte of its JSON: the bytes themselves, and Python's dicts, lists and strings
# parsed from them, which take several times the JSON that describes them. Counted generously: the budget is a bound.
KEPT_BYTES_PER_JSON_BYTE = 6


class ParsedAnswers:
    """The last answer parsed for each key, with the bytes it was parsed from; least recently read out first past
    ``max_bytes``, and an answer that alone would pass it never kept (it is parsed again at each hit). Kept as the
    client keeps the answers it derived (:class:`~lms_api.moodle.client.DerivedAnswers`), each counted
    ``KEPT_BYTES_PER_JSON_BYTE`` times its JSON.

    Only shared reads' answers come here: every page load of an SPA asks for the site info, and served from an entry
    it is parsed once, and the same object lets the view deriver reuse the JSON it dumped of it. The answers a caller
    can vary (users by field, a course search) are parsed at each hit instead, so no caller can fill the process with
    parsed answers. The object is shared by every request that reads it, so no one may change it.
    """

    def __init__(self, max_bytes: int) -> None:
        self._kept = DerivedAnswers(sys.maxsize, max_bytes // KEPT_BYTES_PER_JSON_BYTE)

    def parsed(self, key: str, body: bytes) -> Any:
        """``body`` parsed: the object remembered for ``key`` when it came from the same bytes (the same bytes
        object, as a copy kept near hands out, or equal bytes, as read from Redis); an entry replaced since is parsed
        again."""
        kept = self._kept.get(key, body)
        if kept is not None:
            return kept[1]
        value = loads(body)
        self.remember(key, body, value)
        return value

    def remember(self, key: str, body: bytes, value: Any) -> None:
        """``value`` is ``body`` parsed (as the client parsed Moodle's answer): the answer for ``key`` from now on."""
        self._kept.keep(key, body, value)
