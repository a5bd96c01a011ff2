"""Moodle as views hand it to services: reads through the read cache, writes followed by dropping what they change."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from lms_api.cache.readcache import ReadCache
from lms_api.events import EventEngine
from lms_api.events.writes import published_by
from lms_api.moodle.client import FileUpload, MoodleClient
from lms_api.moodle.functions import MoodleFunction

Written = TypeVar("Written")


class CachedMoodle:
    """The Moodle client, with the read cache in front of it: a read of a function whose group has a time to live is
    answered through the cache; a write that may change cached groups drops them once it has ended, and once Moodle
    has answered it, publishes the events it makes (:mod:`lms_api.events.writes`) to ``events``.

    Dropping after the write, not before: a read that overlaps the write may fetch what Moodle had before it and keep
    it under the group's generation of the moment; the drop that follows hides it. Dropped before, that read would
    be kept under the new generation, and served as if the write had never been made.
    """

    def __init__(
        self, client: MoodleClient, cache: ReadCache, refresh: bool, events: EventEngine | None = None
    ) -> None:
        self._client = client
        self._cache = cache
        self._refresh = refresh
        self._events = events

    @property
    def max_input_vars(self) -> int:
        return self._client.max_input_vars

    def call(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Any:
        if function.writes:
            answer = self._write(function, lambda: self._client.call(function, params))
            if self._events is not None:
                for channel, event_type, data in published_by(function, params, answer):
                    self._events.publish(channel, event_type, data)
            return answer
        if not self._cache.caches(function):
            return self._client.call(function, params)
        if function is not MoodleFunction.SITE_INFO:  # always offered: it is what lists the functions offered
            self._client.require(function)
        return self._cache.read(function, params or {}, lambda: self._client.answer(function, params), self._refresh)

    def require(self, *functions: MoodleFunction) -> None:
        self._client.require(*functions)

    def clean(self, text: str) -> str:
        return self._client.clean(text)

    def upload(self, files: Sequence[FileUpload], itemid: int = 0) -> list[dict[str, Any]]:
        return self._write(MoodleFunction.UPLOAD, lambda: self._client.upload(files, itemid))

    def forget_functions(self) -> None:
        self._client.forget_functions()

    def _write(self, function: MoodleFunction, send: Callable[[], Written]) -> Written:
        """``send`` the write of ``function``, then drop the groups its line in the table names."""
        try:
            return send()
        finally:  # whatever its outcome: a write that failed may still have reached Moodle
            self._cache.invalidate_after(function)
