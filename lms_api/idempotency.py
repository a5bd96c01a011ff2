"""``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) on every write: a client that did not get an
answer sends the same request again with the same key, and is answered what the first one was answered, with
``Idempotent-Replayed: true`` and no second write to Moodle.

A key is the caller's (``sub``) on one route. The first request with it is answered as usual and its answer kept for
``IDEMPOTENCY_TTL_S`` (status, body, ``Content-Type``, ``Location``, ``Retry-After``); meanwhile the key is held, for
``IDEMPOTENCY_LOCK_S`` at most, and the same key again is a 409. A request is told from another by its fingerprint
(method, path with query, SHA-256 of the body; an upload's over its parts, which a browser's retry encodes with a new
boundary): the same key on another request is a 422. Every answer below 500 is kept. A 5xx after which nothing was
written is not: the key is let go so that a retry runs again. A write whose outcome is unknown or partial, or a 5xx
after a write was sent to Moodle, is kept unsettled: a retry asks the operation's ``settled_by`` what happened, or
sends the write again when the operation says that is harmless (``resend_when_unknown``), or else is answered the
unsettled answer again. A key whose lock ran out with no answer kept (its replica stopped mid-write, or the write
outlasted the lock) is no freer: what its write did is unknown, so a retry settles or resends as above, or is refused
(409 ``idempotencyabandoned``) on a route that can do neither; the record lasts ``IDEMPOTENCY_TTL_S`` from the claim.

Kept in Redis when ``REDIS_URL`` is set, so every replica sees each key: a Redis that does not answer refuses keyed
requests with a 503 rather than keeping them in one process, where another replica would not see them and the write
could be done twice. Else kept in the process, within ``IDEMPOTENCY_MAX_MB``, least recently used out first, said in a
warning: an answer dropped before its TTL is replayed no more.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import IO, Any, Protocol, runtime_checkable

import redis
import structlog
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from lms_api.caller import KeptLocationResponse
from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.errors import OUTCOME_PARTIAL, OUTCOME_UNKNOWN
from lms_api.redisstate import RETRY_AFTER_S, RedisLink, redis_client
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.idempotency")

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_HEADERS = ("Content-Type", "Location", "Retry-After", "Preference-Applied")
READ_METHODS = frozenset({"GET", "HEAD"})
KEY_PREFIX = "lms_api:idempotency:"
MAX_KEY_CHARS = 255
IN_PROGRESS_RETRY_AFTER_S = 1
EVICTION_WARNING_INTERVAL_S = 60.0
# What a kept answer costs in the process beyond its bytes: the record, its answer and their dictionaries' slots.
ENTRY_OVERHEAD_BYTES = 512
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_DIGEST_CHUNK_BYTES = 1 << 16
UNSETTLED_OUTCOMES = frozenset({OUTCOME_UNKNOWN, OUTCOME_PARTIAL})


class Handling(StrEnum):
    """How a keyed request was answered, as its log lines say (``idempotency``)."""

    NEW = "new"  # first use of the key
    REPLAYED = "replayed"  # the kept answer
    SETTLED = "settled"  # an unsettled write found done (or finished) by the operation's settled_by
    RESENT = "resent"  # an unsettled write sent again


@dataclass(frozen=True)
class KeptAnswer:
    """An answer as it went out: status, the headers that matter to a replay, and the body's exact bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def of(cls, response: Response) -> KeptAnswer:
        headers = tuple((name, response.headers[name]) for name in KEPT_HEADERS if name in response.headers)
        return cls(response.status_int, headers, response.body)

    def encode(self) -> bytes:
        return json.dumps({"status": self.status, "headers": self.headers}).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> KeptAnswer:
        head, _, body = data.partition(b"\n")
        fields = json.loads(head)
        return cls(fields["status"], tuple((name, value) for name, value in fields["headers"]), body)

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(name) + len(value) for name, value in self.headers)


class ClaimState(Enum):
    BEGAN = "began"  # the key was free: the caller holds it
    TOOK = "took"  # the key held an unsettled answer and the caller asked to take it over: it holds it
    BUSY = "busy"  # another request with the same fingerprint holds it
    ABANDONED = "abandoned"  # its holder's lock ran out with no answer kept: the write's outcome is unknown
    REUSED = "reused"  # the key was used for a request of another fingerprint
    KEPT = "kept"  # the answer kept for it


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    # The kept answer (KEPT) or the unsettled one taken over (TOOK; None when the key was abandoned).
    answer: KeptAnswer | None = None


class IdempotencyStore(Protocol):
    """Keys and their answers. Only the holder named when claiming a key may complete or release it; a key kept by
    neither before its lock's deadline is abandoned, not free, for ``IDEMPOTENCY_TTL_S`` from its claim."""

    def claim(self, key: str, fingerprint: str, holder: str, take_unsettled: bool) -> Claim: ...

    def complete(self, key: str, holder: str, answer: KeptAnswer, unsettled: bool) -> bool: ...

    def release(self, key: str, holder: str) -> bool: ...


@dataclass
class _Record:
    fingerprint: str
    holder: str | None  # while the key is held
    held_until: float
    answer: KeptAnswer | None  # final or unsettled; kept while a retry that took it over holds the key
    unsettled: bool  # its answer, or its abandoned holder's write, may or may not have been applied
    expires: float
    size: int


class LocalIdempotencyStore:
    """Keys in this process, within ``max_bytes``: least recently used out first, a held key never."""

    def __init__(
        self, ttl_s: float, lock_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._lock_s = lock_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self._evicted = 0  # since the last warning
        self._warned_at: float | None = None

    @property
    def bytes_kept(self) -> int:
        return self._bytes

    def claim(self, key: str, fingerprint: str, holder: str, take_unsettled: bool) -> Claim:
        now = self._clock()
        with self._lock:
            record = self._records.get(key)
            if record is not None and record.expires <= now:
                self._drop(key)
                record = None
            if record is None:
                expires = now + max(self._ttl_s, self._lock_s)
                self._put(key, _Record(fingerprint, holder, now + self._lock_s, None, False, expires, 0))
                return Claim(ClaimState.BEGAN)
            self._records.move_to_end(key)
            if record.fingerprint != fingerprint:
                return Claim(ClaimState.REUSED)
            if record.holder is not None and record.held_until > now:
                return Claim(ClaimState.BUSY)
            abandoned = record.answer is None
            if (record.unsettled or abandoned) and take_unsettled:
                record.holder, record.held_until, record.unsettled = holder, now + self._lock_s, True
                record.expires = max(record.expires, record.held_until)
                return Claim(ClaimState.TOOK, record.answer)
            if abandoned:
                return Claim(ClaimState.ABANDONED)
            return Claim(ClaimState.KEPT, record.answer)

    def complete(self, key: str, holder: str, answer: KeptAnswer, unsettled: bool) -> bool:
        now = self._clock()
        with self._lock:
            record = self._records.get(key)
            if record is None or record.holder != holder:
                return False
            self._put(key, _Record(record.fingerprint, None, 0.0, answer, unsettled, now + self._ttl_s, 0))
            self._evict(now)
            return True

    def release(self, key: str, holder: str) -> bool:
        with self._lock:
            record = self._records.get(key)
            if record is None or record.holder != holder:
                return False
            if record.unsettled:  # a retry that took over an unsettled or abandoned key: it stays so, for the next
                record.holder = None
            else:
                self._drop(key)
            return True

    def _put(self, key: str, record: _Record) -> None:
        self._drop(key)
        record.size = ENTRY_OVERHEAD_BYTES + len(key) + len(record.fingerprint)
        record.size += record.answer.size if record.answer is not None else 0
        self._records[key] = record
        self._bytes += record.size

    def _drop(self, key: str) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            self._bytes -= record.size

    def _evict(self, now: float) -> None:
        excess = self._bytes - self._max_bytes
        evicted = []
        for key, record in self._records.items():  # least recently used first
            if excess <= 0:
                break
            if record.holder is None or record.held_until <= now:
                evicted.append(key)
                excess -= record.size
        for key in evicted:
            self._drop(key)
        self._evicted += len(evicted)
        if self._evicted and (self._warned_at is None or now - self._warned_at >= EVICTION_WARNING_INTERVAL_S):
            log.warning(
                "idempotency.evicted",
                answers=self._evicted,
                max_bytes=self._max_bytes,
                note="answers dropped before IDEMPOTENCY_TTL_S to stay within IDEMPOTENCY_MAX_MB are replayed no more",
            )
            self._evicted, self._warned_at = 0, now


# The record is a hash: fingerprint, and while held holder and until (the lock's deadline, ms, Redis's clock); once
# answered, answer; unsettled when its answer, or an abandoned holder's write, may or may not have been applied. It
# lives IDEMPOTENCY_TTL_S from its claim, and from its answer once answered; a retry that takes it over extends it to
# its own lock's deadline at least.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lock_ms = tonumber(ARGV[3])
local r = redis.call('HMGET', KEYS[1], 'fingerprint', 'holder', 'until', 'answer', 'unsettled')
if not r[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'holder', ARGV[2], 'until', now + lock_ms)
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), lock_ms))
  return {'began'}
end
if r[1] ~= ARGV[1] then return {'reused'} end
if r[2] and tonumber(r[3]) > now then return {'busy'} end
if (r[5] == '1' or not r[4]) and ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'until', now + lock_ms, 'unsettled', '1')
  if redis.call('PTTL', KEYS[1]) < lock_ms then redis.call('PEXPIRE', KEYS[1], lock_ms) end
  if r[4] then return {'took', r[4]} end
  return {'took'}
end
if not r[4] then return {'abandoned'} end
return {'kept', r[4]}
"""
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'answer', ARGV[2], 'unsettled', ARGV[3])
redis.call('HDEL', KEYS[1], 'holder', 'until')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'unsettled') == '1' then redis.call('HDEL', KEYS[1], 'holder', 'until')
else redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisIdempotencyStore:
    """Keys in Redis, shared by every replica. No fallback: while Redis does not answer, a keyed request is a 503."""

    def __init__(self, link: RedisLink, ttl_s: float, lock_s: float) -> None:
        self.link = link
        self._ttl_ms = round(ttl_s * 1000)
        self._lock_ms = round(lock_s * 1000)
        self._claim = link.client.register_script(_CLAIM)
        self._complete = link.client.register_script(_COMPLETE)
        self._release = link.client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, ttl_s: float, lock_s: float) -> RedisIdempotencyStore:
        note = "requests with an Idempotency-Key are refused until Redis answers again"
        return cls(RedisLink(redis_client(url), "idempotency", note), ttl_s, lock_s)

    def claim(self, key: str, fingerprint: str, holder: str, take_unsettled: bool) -> Claim:
        if not self.link.usable:
            raise store_unavailable()
        try:
            found = self._claim(
                keys=[KEY_PREFIX + key],
                args=[fingerprint, holder, self._lock_ms, "1" if take_unsettled else "0", self._ttl_ms],
            )
        except redis.RedisError as error:
            self.link.went_down(error)
            raise store_unavailable() from None
        self.link.answered()
        state = ClaimState(found[0].decode())
        return Claim(state, KeptAnswer.decode(found[1]) if len(found) > 1 else None)

    def complete(self, key: str, holder: str, answer: KeptAnswer, unsettled: bool) -> bool:
        """Raises when Redis does not answer: the answer is not kept, and the key stays held until its lock's
        deadline, after which it is abandoned."""
        try:
            return self._holders_call(
                self._complete, key, [holder, answer.encode(), "1" if unsettled else "0", self._ttl_ms]
            )
        except redis.RedisError as error:
            self.link.went_down(error)
            raise

    def release(self, key: str, holder: str) -> bool:
        """False when Redis does not answer: the key stays held until its lock's deadline, then is abandoned."""
        try:
            return self._holders_call(self._release, key, [holder])
        except redis.RedisError as error:
            self.link.went_down(error)
            return False

    def _holders_call(self, script: Any, key: str, args: list[Any]) -> bool:
        done = bool(script(keys=[KEY_PREFIX + key], args=args))
        self.link.answered()
        return done


def store_unavailable() -> ApiError:
    return ApiError(
        ErrorCode.IDEMPOTENCY_UNAVAILABLE,
        "Idempotency-Key cannot be honoured now: the store of keys does not answer; nothing was done",
        headers={"Retry-After": str(round(RETRY_AFTER_S))},
    )


def store_from_settings(settings: Settings) -> IdempotencyStore:
    ttl_s, lock_s = settings.idempotency_ttl_s, settings.idempotency_lock_s
    if settings.redis_url:
        return RedisIdempotencyStore.from_url(settings.redis_url, ttl_s, lock_s)
    return LocalIdempotencyStore(ttl_s, lock_s, settings.idempotency_max_mb << 20)


# -- the request side ------------------------------------------------------------------------------------------------


def requested_key(request: Request) -> str | None:
    """The write's ``Idempotency-Key``: 1 to 255 printable ASCII characters, or a structured-field string (the
    draft's form, ``"..."``) of them. None for a read, or a write without one unless IDEMPOTENCY_REQUIRED."""
    if request.method in READ_METHODS:
        return None
    value: str | None = request.headers.get(KEY_HEADER)
    if value is None:
        if request.lms_settings.idempotency_required:
            raise ApiError(
                ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
                f"Writes must carry an {KEY_HEADER} header (1 to {MAX_KEY_CHARS} printable ASCII characters)",
            )
        return None
    quoted = len(value) >= 2 and value[0] == value[-1] == '"'
    key = _unquoted(value) if quoted else value
    # A comma outside a quoted key is where a server joined the header given twice.
    if (
        key is None
        or not 1 <= len(key) <= MAX_KEY_CHARS
        or not _PRINTABLE.fullmatch(key)
        or (not quoted and "," in key)
    ):
        raise ApiError(
            ErrorCode.INVALID_IDEMPOTENCY_KEY,
            f"{KEY_HEADER} must be given once, as 1 to {MAX_KEY_CHARS} printable ASCII characters without a comma, "
            'or as a quoted string ("...") of them',
        )
    return key


def _unquoted(value: str) -> str | None:
    """A structured-field string's content (RFC 8941 §3.3.3): ``\\"`` and ``\\\\`` escape; None when it is not one."""
    content, escaped = [], False
    for char in value[1:-1]:
        if escaped:
            if char not in '"\\':
                return None
            content.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            content.append(char)
    return None if escaped else "".join(content)


class DigestedInput:
    """A body stream that hashes what is read through it: a JSON body's digest, as the body is read once."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int | None = -1) -> bytes:
        data = self._stream.read(-1 if size is None else size)
        self.digest.update(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._stream.readline(-1 if size is None else size)
        self.digest.update(data)
        return data


def digest_body(request: Request) -> DigestedInput:
    digested = DigestedInput(request.environ["wsgi.input"])
    request.environ["wsgi.input"] = digested
    return digested


@runtime_checkable
class _UploadedFile(Protocol):
    """A file of a loaded form, as the upload hands it to Moodle (``lms_api.moodle.client.FileUpload``)."""

    filename: str
    content_type: str
    stream: IO[bytes]


def form_digest(form: Mapping[str, Any]) -> str:
    """An upload's digest over its fields as loaded: each file's field name, filename, media type and content."""
    digest = hashlib.sha256()
    for name in sorted(form):
        values = form[name] if isinstance(form[name], list) else [form[name]]
        for value in values:
            if isinstance(value, _UploadedFile):
                digest.update(json.dumps(["file", name, value.filename, value.content_type]).encode())
                value.stream.seek(0)
                while chunk := value.stream.read(_DIGEST_CHUNK_BYTES):
                    digest.update(chunk)
                value.stream.seek(0)
            else:
                digest.update(json.dumps(["field", name, value], default=str).encode())
    return digest.hexdigest()


def fingerprint(request: Request, body_digest: str) -> str:
    return hashlib.sha256(json.dumps([request.method, request.path_qs, body_digest]).encode()).hexdigest()


def scoped_key(sub: str, route_name: str, key: str) -> str:
    """The key as stored: the caller's, on one route; hashed, so that neither appears in Redis."""
    return hashlib.sha256(json.dumps([sub, route_name, key]).encode()).hexdigest()


def answer_once(
    request: Request,
    key: str,
    fingerprinted: str,
    *,
    take_unsettled: bool,
    first: Callable[[], Response],
    settle: Callable[[], Response | None] | None,
) -> Response:
    """Answer a keyed write: the kept answer, a refusal, or ``first()`` (or ``settle()`` for an unsettled write) with
    its answer kept once the exception views are done with it."""
    store: IdempotencyStore = request.find_service(IdempotencyStore)
    scoped = scoped_key(request.identity.sub, request.matched_route.name, key)
    holder = uuid.uuid4().hex
    claim = store.claim(scoped, fingerprinted, holder, take_unsettled)
    if claim.state is ClaimState.REUSED:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"This {KEY_HEADER} was used on this route for another request (method, path or body): use a new key",
        )
    if claim.state is ClaimState.BUSY:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_IN_PROGRESS,
            f"A request with this {KEY_HEADER} is still being answered; ask again in a moment",
            headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER_S)},
        )
    if claim.state is ClaimState.ABANDONED:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_ABANDONED,
            f"The first request with this {KEY_HEADER} stopped before it answered, and whether its write was done is "
            "unknown: check in Moodle, then send it with a new key",
        )
    if claim.state is ClaimState.KEPT and claim.answer is not None:  # a kept claim always carries its answer
        _handled(request, Handling.REPLAYED)
        return replay(request, claim.answer)
    _hold(request, store, scoped, holder)
    if claim.state is ClaimState.TOOK and settle is not None:
        settled = settle()
        if settled is not None:
            _handled(request, Handling.SETTLED)
            return settled
    _handled(request, Handling.RESENT if claim.state is ClaimState.TOOK else Handling.NEW)
    return first()


def replay(request: Request, answer: KeptAnswer) -> Response:
    response = KeptLocationResponse(status=answer.status, headerlist=list(answer.headers), body=answer.body)
    response.headers[REPLAYED_HEADER] = "true"
    if answer.status >= 400:
        request.api_error = _replayed_error(answer)
    return response


def _replayed_error(answer: KeptAnswer) -> ApiError | None:
    """The error a replayed error answer says, for the tweens that report on it (audit's outcome is its code); every
    error answer is an envelope, but a kept answer is not trusted to be one."""
    try:
        error = json.loads(answer.body)["error"]
        return ApiError(error["code"], error["message"], error["details"], status=answer.status)
    except (ValueError, LookupError, TypeError):
        return None


def _hold(request: Request, store: IdempotencyStore, key: str, holder: str) -> None:
    """Keep the answer, as the exception views left it. A key still held when the request ends (an exception no view
    answered, or the answer could not be kept) is let go when no write was sent; else it stays held until its lock's
    deadline and is then abandoned, as a retry must not write blindly again."""
    held = [True]

    def keep(request: Request, response: Response) -> None:
        error: ApiError | None = request.api_error
        outcome = error.details.get("outcome") if error is not None else None
        try:
            if outcome in UNSETTLED_OUTCOMES:
                store.complete(key, holder, KeptAnswer.of(response), unsettled=True)
            elif response.status_int < 500:
                store.complete(key, holder, KeptAnswer.of(response), unsettled=False)
            elif _wrote(request):  # a 5xx after Moodle may have written: what it did is unknown
                store.complete(key, holder, KeptAnswer.of(response), unsettled=True)
            else:  # nothing was written: a retry runs again
                store.release(key, holder)
        except Exception as failure:  # the caller still gets its answer; the key stays held, or is let go below
            log.error(
                "idempotency.keep_failed",
                error=type(failure).__name__,
                status=response.status_int,
                write_sent=_wrote(request),  # then held until IDEMPOTENCY_LOCK_S, and abandoned
            )
            return
        held[0] = False

    def let_go(request: Request) -> None:
        if held[0] and not _wrote(request):
            store.release(key, holder)

    request.add_response_callback(keep)
    request.add_finished_callback(let_go)


def _wrote(request: Request) -> bool:
    """A write call of this request may have reached Moodle."""
    return any(call.writes and call.sent for call in request.moodle_calls.calls)


def _handled(request: Request, handling: Handling) -> None:
    """Said by every later log line of the request, the audit and summary lines included."""
    structlog.contextvars.bind_contextvars(idempotency=handling.value)
    request.add_finished_callback(lambda request: structlog.contextvars.unbind_contextvars("idempotency"))


def includeme(config: Configurator) -> None:
    config.include("lms_api.service_lookup")
    config.register_service(store_from_settings(config.registry.settings["lms_api.settings"]), IdempotencyStore)
