"""Moodle's answers as parsed from cache entries, remembered for the last keys read: a hit on the same stored answer
is the same object, parsed once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from lms_api.jsoncodec import loads

MAX_PARSED = 64  # keys whose last answer is remembered parsed


class ParsedAnswers:
    """The last answer parsed for each of the last ``size`` keys, with the bytes it was parsed from.

    Every page load of an SPA asks for the site info, a 50 KB answer on a real site: served from an entry, it is
    parsed once, and the same object lets the view deriver reuse the JSON it dumped of it. The object is shared by
    every request that reads it, so no one may change it.
    """

    def __init__(self, size: int = MAX_PARSED) -> None:
        self._size = size
        self._answers: OrderedDict[str, tuple[bytes, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def parsed(self, key: str, body: bytes) -> Any:
        """``body`` parsed: the object remembered for ``key`` when it came from the same bytes."""
        with self._lock:
            kept = self._answers.get(key)
            if kept is not None and kept[0] == body:  # an entry read from this process's memory: the same object
                self._answers.move_to_end(key)
                return kept[1]
        value = loads(body)
        self.remember(key, body, value)
        return value

    def remember(self, key: str, body: bytes, value: Any) -> None:
        """``value`` is ``body`` parsed (as the client parsed Moodle's answer): the answer for ``key`` from now on."""
        with self._lock:
            self._answers[key] = (body, value)
            self._answers.move_to_end(key)
            if len(self._answers) > self._size:
                self._answers.popitem(last=False)
