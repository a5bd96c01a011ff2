"""Who uploaded each draft item: a caller attaches, or adds files to, only the draft items it uploaded itself.

Every upload lands in the draft area of the one Moodle user behind the gateway's token, so Moodle cannot tell
callers apart: the gateway remembers the ``sub`` that received each draft item id, in Redis when ``REDIS_URL`` is set
(every replica sees it), else in the process. Another caller's item, and an id the gateway never issued, are answered
as a missing one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from pyramid.config import Configurator

from lms_api.errors import ApiError, ErrorCode
from lms_api.redisstate import RedisLink, redis_client
from lms_api.settings import Settings

# Moodle deletes a draft area 4 days after it was made: file_storage::cron() in lib/filestorage/file_storage.php
# (run by the scheduled task \core\task\file_trash_cleanup_task) purges draft areas whose root was created before
# time() - 60*60*24*4. Adding files to an item does not renew it, so neither does the gateway.
DRAFT_LIFETIME_S = 4 * 24 * 60 * 60
KEY_PREFIX = "lms_api:draft:"
MAX_LOCAL_DRAFTS = 100_000


class DraftOwners(Protocol):
    def remember(self, itemid: int, sub: str) -> None: ...

    def owner(self, itemid: int) -> str | None: ...


class LocalDraftOwners:
    """Owners in this process, each for the draft's lifetime; at most MAX_LOCAL_DRAFTS, the oldest forgotten first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._owners: dict[int, tuple[float, str]] = {}  # itemid -> (expiry, sub), oldest first
        self._lock = threading.Lock()

    def remember(self, itemid: int, sub: str) -> None:
        now = self._clock()
        with self._lock:
            if itemid in self._owners and self._owners[itemid][0] > now:
                return  # the item's lifetime runs from its first upload
            self._owners.pop(itemid, None)
            while self._owners and (
                len(self._owners) >= MAX_LOCAL_DRAFTS or next(iter(self._owners.values()))[0] <= now
            ):
                del self._owners[next(iter(self._owners))]
            self._owners[itemid] = (now + DRAFT_LIFETIME_S, sub)

    def owner(self, itemid: int) -> str | None:
        with self._lock:
            expiry, sub = self._owners.get(itemid, (0.0, None))
        return sub if expiry > self._clock() else None


class RedisDraftOwners:
    """Owners in Redis, shared by every replica, expiring with the draft; kept in the process too, so that a
    draft uploaded while Redis did not answer can still be attached by its owner, here."""

    def __init__(self, link: RedisLink, local: LocalDraftOwners) -> None:
        self.link = link
        self._local = local

    @classmethod
    def from_url(cls, url: str) -> RedisDraftOwners:
        note = "draft items are remembered per process until Redis answers again"
        return cls(RedisLink(redis_client(url), "drafts", note), LocalDraftOwners())

    def remember(self, itemid: int, sub: str) -> None:
        self._local.remember(itemid, sub)
        if self.link.usable:
            try:
                self.link.client.set(KEY_PREFIX + str(itemid), sub, ex=DRAFT_LIFETIME_S, nx=True)
            except redis.RedisError as error:
                self.link.went_down(error)
            else:
                self.link.answered()

    def owner(self, itemid: int) -> str | None:
        if self.link.usable:
            try:
                stored = self.link.client.get(KEY_PREFIX + str(itemid))
            except redis.RedisError as error:
                self.link.went_down(error)
            else:
                self.link.answered()
                if isinstance(stored, bytes):
                    return stored.decode()
        return self._local.owner(itemid)


def owners_from_settings(settings: Settings) -> DraftOwners:
    return RedisDraftOwners.from_url(settings.redis_url) if settings.redis_url else LocalDraftOwners()


def check_owner(owners: DraftOwners, itemid: int, sub: str) -> None:
    """404 ``draftnotfound`` unless ``sub`` uploaded draft item ``itemid`` through the gateway, and not too long ago."""
    if owners.owner(itemid) != sub:
        raise ApiError(
            ErrorCode.DRAFT_NOT_FOUND,
            f"No draft item {itemid} of yours: draft items are those this caller uploaded through the gateway in the "
            f"last {DRAFT_LIFETIME_S // 86400} days",
            {"draftitemid": itemid},
        )


def includeme(config: Configurator) -> None:
    owners = owners_from_settings(config.registry.settings["lms_api.settings"])
    config.add_request_method(lambda request: owners, "draft_owners", reify=True)
