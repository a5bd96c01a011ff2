"""MoodleClient: the one synchronous client that talks to Moodle's REST server.

It calls a function by its :class:`~lms_api.moodle.functions.MoodleFunction` member, bracket-encodes params, keeps
the token in the POST body, gives each logical call one deadline (retries included), retries only the functions the
table declares reads, turns every failure into a :class:`MoodleError`, checks a function is enabled before calling
it and its answer has the declared shape after. An answer is read up to ``MOODLE_MAX_ANSWER_MB`` and no further.
When Moodle gives no usable answer, the error says why for operators (:class:`Cause`), and the client logs when Moodle
stops answering and when it answers again. Its ``includeme`` registers one client per process as a Pyramid service;
the read cache's front (``CachedMoodle``), health and metrics look it up with ``request.find_service(MoodleClient)``.
Without ``MOODLE_BASE_URL`` (development only) the client talks to whatever ``MOODLE_SANDBOX`` starts, by default the
built-in emulator, imported only then.
"""

from __future__ import annotations

import inspect
import random
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any, NamedTuple, Protocol, Self, assert_never
from urllib.parse import SplitResult, unquote, urlencode, urlsplit

import certifi
import structlog
from pyramid.config import Configurator
from requests_toolbelt.multipart.encoder import MultipartEncoder
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import create_urllib3_context, make_headers

from lms_api.calllog import CallRecord, current_call_log
from lms_api.errors import ErrorCode
from lms_api.jsoncodec import loads
from lms_api.logging import scrub_from_logs
from lms_api.moodle.encoding import encode_params
from lms_api.moodle.errors import (
    OUTCOME_UNKNOWN,
    MoodleError,
    MoodleRecord,
    clean_text,
    code_of,
    error_from_moodle,
    expect_list,
    function_not_available,
    is_moodle_error,
    retry_after_header,
    unexpected_answer,
)
from lms_api.moodle.functions import AnswerShape, MoodleFunction
from lms_api.moodle.guard import BreakerOpen, BreakerState, Bulkhead, BulkheadFull, CircuitBreaker
from lms_api.settings import DEFAULT_ATTACH_FUNCTION, MIB, Settings

log = structlog.get_logger("lms_api.moodle")

REST_PATH = "/webservice/rest/server.php"
UPLOAD_PATH = "/webservice/upload.php"
BACKOFF_BASE_S = 0.1
MAX_CONNECT_TIMEOUT_S = 3.0
READ_CHUNK_BYTES = 1 << 20  # an answer is read in reads this large at most
RETRYABLE_STATUSES = frozenset({502, 503, 504})
POOL_SIZE = 4  # keep-alive connections per server thread
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
BUSY_RETRY_AFTER_S = 1
# What a caller is told when no connection was made, whatever the cause: only MOODLE_DEBUG adds it to the details.
UNREACHABLE_MESSAGE = "Moodle could not be reached"
# Moodle's refusals made before any web-service function runs (its server checks these first): a write so refused
# was not applied.
REFUSED_BEFORE_RUNNING = frozenset(
    {ErrorCode.SITE_MAINTENANCE, ErrorCode.UPGRADE_RUNNING, ErrorCode.INVALID_MOODLE_TOKEN}
)
UNBOUNDED = 1_000_000  # a client made without a bulkhead or a breaker (unit tests of other concerns)
# The shared reads' answers the client keeps derived (see DerivedAnswers): how many, and how many bytes of Moodle's
# JSON in all. A shared read's parameters are the gateway's, never a caller's, so a few keys hold them all; an answer
# alone over the budget is derived at each call. Its parsed form takes several times these bytes.
MAX_DERIVED_ANSWERS = 8
MAX_DERIVED_JSON_BYTES = 4 * MIB


class FileUpload(Protocol):
    """One file for upload.php, whatever type holds it: read from ``stream`` (rewound before each attempt)."""

    @property
    def filename(self) -> str: ...

    @property
    def stream(self) -> IO[bytes]: ...

    @property
    def content_type(self) -> str: ...


class CauseKind(StrEnum):
    REFUSED = "refused"  # nothing accepts connections at the address
    DNS = "dns"  # the host name does not resolve
    TLS = "tls"  # TLS failed: a certificate not trusted or not for the name, no TLS at the address, a broken session
    NETWORK = "network"  # no connection for another reason: no route to the host, the network unreachable
    TIMEOUT = "timeout"  # no connection, or no answer, within the call's deadline
    RESET = "reset"  # the connection was closed or reset before an answer came
    HTTP = "http"  # an HTTP status that is not an answer of Moodle's REST server (502, 503, 504, a 404 page...)


@dataclass(frozen=True)
class Cause:
    """Why Moodle gave no usable answer, for operators: ``kind`` in a word, ``reason`` with the particulars (the
    host and port, the status, what TLS said). Never the token: it travels in the body, never in the URL."""

    kind: CauseKind
    reason: str

    def fields(self) -> dict[str, str]:
        return {"cause": self.kind.value, "reason": self.reason}


class MoodleUnreachable(MoodleError):
    """Moodle could not be reached at MOODLE_BASE_URL, or something else answered there; ``cause`` says why, and is
    None on a copy a route raises with its own message through ApiError's constructor."""

    cause: Cause | None = None

    @classmethod
    def because(cls, cause: Cause, code: ErrorCode, message: str, details: Mapping[str, Any], **options: Any) -> Self:
        error = cls(code, message, details, **options)
        error.cause = cause
        return error


@dataclass(frozen=True)
class _TransportFailure:
    """A try that got no usable answer.

    ``sent``: bytes may have reached Moodle, so a write must not be sent again.
    ``outcome_unknown``: for a write, Moodle may or may not have applied it.
    """

    code: ErrorCode
    message: str
    sent: bool
    outcome_unknown: bool
    cause: Cause
    retry_after_s: int | None = None


@dataclass(frozen=True)
class _Oversized:
    """Moodle answered with more than MOODLE_MAX_ANSWER_MB: not read past the limit, and not retried (it would be as
    large again). Moodle is up, so the breaker is not told of a failure."""

    status_code: int


@dataclass(frozen=True)
class _Reply:
    """Moodle's HTTP answer, read whole."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


class Answer(NamedTuple):
    value: Any  # Moodle's answer, parsed
    body: bytes  # as Moodle sent it: JSON


class DerivedAnswers:
    """The last answer derived from Moodle's bytes for each shared read (``MoodleFunction.shared``) and parameters:
    bytes identical to the last ones give the same object again, neither parsed nor checked anew, so that the read
    cache's parsed answers and the view's remembered dump of it are reused too. Other bytes are derived in full and
    replace it. Least recently used out first past ``max_count`` answers or ``max_bytes`` of JSON.

    Only a shared read's answers come here: the same for every caller, and never changed by anyone who reads them.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._answers: OrderedDict[Hashable, tuple[bytes, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, body: bytes) -> tuple[bytes, Any] | None:
        """The bytes and the answer kept for ``key``, when derived from bytes equal to ``body``; else None."""
        with self._lock:
            kept = self._answers.get(key)
            if kept is None or kept[0] != body:
                return None
            self._answers.move_to_end(key)
            return kept

    def keep(self, key: Hashable, body: bytes, answer: Any) -> None:
        with self._lock:
            self._forget(key)
            if len(body) > self._max_bytes:
                return
            self._answers[key] = (body, answer)
            self._bytes += len(body)
            while self._bytes > self._max_bytes or len(self._answers) > self._max_count:
                self._forget(next(iter(self._answers)))

    def _forget(self, key: Hashable) -> None:
        kept = self._answers.pop(key, None)
        if kept is not None:
            self._bytes -= len(kept[0])


class Moodle(Protocol):
    """What route services need of Moodle: :class:`MoodleClient`, or the read cache in front of it.

    What ``call`` returns may be shared with other requests (a cached answer): a service reads it and builds its own
    dicts and lists, never changing it.
    """

    @property
    def max_input_vars(self) -> int: ...

    def call(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Any: ...

    def require(self, *functions: MoodleFunction) -> None: ...

    def clean(self, text: str) -> str: ...

    def upload(self, files: Sequence[FileUpload], itemid: int = 0) -> list[dict[str, Any]]: ...

    def forget_functions(self) -> None: ...


class MoodleClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float,
        max_retries: int,
        functions_ttl_s: float,
        max_input_vars: int = 5000,
        debug: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = lambda: random.uniform(0.8, 1.2),
        bulkhead: Bulkhead | None = None,
        breaker: CircuitBreaker | None = None,
        max_answer_bytes: int = 32 * MIB,
        attach_function: str = DEFAULT_ATTACH_FUNCTION,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        # The URL as logs and /readyz name it: without a user and password it may carry.
        self.public_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self._address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self._endpoint = parts.path + REST_PATH
        self._upload_path = parts.path + UPLOAD_PATH
        self._base_parts = parts
        self._headers = _credentials_of(parts)
        self._tls = _trusted_context() if parts.scheme == "https" else None
        self._token = token
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._functions_ttl_s = functions_ttl_s
        self.max_input_vars = max_input_vars
        self._debug = debug
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self.bulkhead = bulkhead or Bulkhead(UNBOUNDED, 0.0)
        self.breaker = breaker or CircuitBreaker(UNBOUNDED, 0.0, clock)
        self._local = threading.local()
        self._functions: frozenset[str] | None = None
        self._listed: tuple[list[MoodleRecord], frozenset[str]] | None = None  # a function list and its names
        self._functions_expire_at = 0.0
        self._functions_lock = threading.Lock()
        self._max_answer_bytes = max_answer_bytes
        self._attach_function = attach_function
        self._reach_lock = threading.Lock()
        self._unreachable: Cause | None = None
        self._unreachable_since = 0.0
        self._failed_calls = 0
        self._derived = DerivedAnswers(MAX_DERIVED_ANSWERS, MAX_DERIVED_JSON_BYTES)

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str, token: str, **overrides: Any) -> MoodleClient:
        """The client the gateway uses for ``settings``; ``overrides`` replace keyword arguments (tests: a clock)."""
        options: dict[str, Any] = {
            "timeout_s": settings.moodle_timeout_ms / 1000,
            "max_retries": settings.moodle_max_retries,
            "functions_ttl_s": settings.moodle_functions_ttl_s,
            "max_input_vars": settings.moodle_max_input_vars,
            "debug": settings.moodle_debug,
            "max_answer_bytes": settings.moodle_max_answer_mb * MIB,
            "attach_function": settings.moodle_attach_function,
            "bulkhead": Bulkhead(settings.moodle_max_concurrency, settings.moodle_queue_timeout_ms / 1000),
            "breaker": CircuitBreaker(
                settings.moodle_breaker_failures,
                settings.moodle_breaker_cooldown_s,
                overrides.get("clock", time.monotonic),
            ),
        }
        return cls(base_url, token, **(options | overrides))

    def __repr__(self) -> str:
        return f"MoodleClient(base_url={self.base_url!r})"

    # -- public API -------------------------------------------------------------------------------

    def call(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Any:
        """Call ``function`` if the site offers it; answer 501 ``functionnotavailable`` without calling otherwise."""
        return self.answer(function, params).value

    def answer(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Answer:
        """:meth:`call`, with the answer's bytes as Moodle sent them (the read cache keeps those, not a copy).

        The answer has the shape ``function`` declares, or this is a 502 ``badresponse``. The site info is called
        without a check first (it is what says which functions the token has), and its function list is kept.
        """
        if function is not MoodleFunction.SITE_INFO:
            self.require(function)
        try:
            return self._call(function, params or {})
        except MoodleError as error:
            if error.code == ErrorCode.ACCESS_EXCEPTION:
                self.forget_functions()
            raise

    def require(self, *functions: MoodleFunction) -> None:
        """501 ``functionnotavailable`` for the first of ``functions`` the site does not offer."""
        available = self.available_functions()
        for function in functions:
            if self.name_of(function) not in available:
                raise function_not_available(self.name_of(function))

    def name_of(self, function: MoodleFunction) -> str:
        """The name this site knows ``function`` by: the member's, or MOODLE_ATTACH_FUNCTION's for the attach."""
        return self._attach_function if function is MoodleFunction.ATTACH_FILE else function.value

    @property
    def unreachable(self) -> Cause | None:
        """Why the last logical call that failed found Moodle unreachable, until Moodle answers again."""
        return self._unreachable

    @property
    def knows_functions(self) -> bool:
        """Whether the token's function list has been read (it may be due for a refresh)."""
        return self._functions is not None

    def forget_functions(self) -> None:
        """The token's service may have changed: read the function list again on the next call."""
        self._functions_expire_at = 0.0

    def clean(self, text: str) -> str:
        """A Moodle text fit to pass on: without the gateway's token or any server path."""
        return clean_text(text, (self._token,))

    def available_functions(self) -> frozenset[str]:
        """The functions of the token's service, from site info, cached for ``functions_ttl_s``."""
        if self._functions is not None and self._clock() < self._functions_expire_at:
            return self._functions
        with self._functions_lock:  # one site-info fetch at a time, the others reuse its answer
            if self._functions is None or self._clock() >= self._functions_expire_at:
                self.answer(MoodleFunction.SITE_INFO)
            assert self._functions is not None
            return self._functions

    def upload(self, files: Sequence[FileUpload], itemid: int = 0) -> list[dict[str, Any]]:
        """Store ``files`` in the token user's draft area through ``upload.php``; ``itemid`` 0 starts a new one.

        The body is streamed from each file object, so a large file is never held in memory. Moodle's answer
        is one entry per file; an entry may be a per-file error, which the caller must look at. A call with such an
        entry is recorded as failed, under the entry's ``errortype``.
        """

        def body() -> tuple[MultipartEncoder, dict[str, str]]:
            fields: list[tuple[str, Any]] = [("token", self._token), ("itemid", str(itemid)), ("filepath", "/")]
            for number, upload in enumerate(files, start=1):
                upload.stream.seek(0)
                fields.append((f"file_{number}", (upload.filename, upload.stream, upload.content_type)))
            encoder = MultipartEncoder(fields)
            # With its length, the body goes out as it is read, without chunked transfer encoding.
            return encoder, {"Content-Type": encoder.content_type, "Content-Length": str(encoder.len)}

        function = MoodleFunction.UPLOAD
        with self._recorded(function, {"files": files, "itemid": itemid}, 3 + len(files)) as record:
            reply = self._send_with_retries(function, self._upload_path, body, record)
            entries = expect_list(self._checked(function, self._parse(function, reply)), function.value)
            refused = [code_of(str(entry["errortype"])) for entry in entries if "errortype" in entry]
            record.outcome = _outcome(refused[0]) if refused else "ok"
        return entries

    # -- one logical call -------------------------------------------------------------------------

    def _remember_functions(self, functions: list[MoodleRecord]) -> None:
        listed = self._listed
        if listed is not None and listed[0] is functions:  # the site info derived before: its names are known
            names = listed[1]
        else:
            names = frozenset(entry["name"] for entry in functions) | {MoodleFunction.SITE_INFO.value}
            self._listed = (functions, names)
        self._functions = names
        self._functions_expire_at = self._clock() + self._functions_ttl_s

    def _checked(self, function: MoodleFunction, value: Any) -> Any:
        """``value`` if it has the shape ``function`` declares; a 502 otherwise, so a changed Moodle never causes a
        500. The site info's function list is kept from it."""
        name = self.name_of(function)
        if not _has_shape(value, function.answer):
            raise unexpected_answer(name, wrote=function.writes)
        if function is MoodleFunction.SITE_INFO:
            functions = expect_list(value.get("functions"), name, key="name")
            expect_list(value.get("advancedfeatures", []), name)  # dumped record by record by the route
            self._remember_functions(functions)
        return value

    def _call(self, function: MoodleFunction, params: Mapping[str, Any]) -> Answer:
        name = self.name_of(function)
        form = [("wstoken", self._token), ("wsfunction", name), ("moodlewsrestformat", "json")]
        form += encode_params(params)
        with self._recorded(function, params, len(form) - 3) as record:
            body = urlencode(form).encode("ascii")
            reply = self._send_with_retries(function, self._endpoint, lambda: (body, FORM_HEADERS), record)
            answer = self._derive(function, tuple(form[1:]), reply)
            record.outcome = "ok"
            return answer

    def _derive(self, function: MoodleFunction, key: Hashable, reply: _Reply) -> Answer:
        """Moodle's answer parsed and checked; a shared read's the same object as last time when Moodle sent the same
        bytes (comparing them costs far less than parsing, checking and dumping them again), with what a fresh answer
        does besides: Moodle noted as answering, the site info's function list kept anew."""
        if not function.shared:
            return Answer(self._checked(function, self._parse(function, reply)), reply.content)
        kept = self._derived.get(key, reply.content) if reply.status_code == 200 else None
        if kept is None:
            answer = Answer(self._checked(function, self._parse(function, reply)), reply.content)
            self._derived.keep(key, answer.body, answer.value)
            return answer
        self._note_answered()
        body, value = kept
        if function is MoodleFunction.SITE_INFO:
            self._remember_functions(value["functions"])
        return Answer(value, body)

    @contextmanager
    def _recorded(self, called: MoodleFunction, params: Mapping[str, Any], fields: int) -> Iterator[CallRecord]:
        """Account one logical call for the request's summary line and, with MOODLE_DEBUG, its own line.

        The block sets the outcome of a call that raised nothing (``ok``, or an upload's refused file); a call that
        raised a :class:`MoodleError` is recorded under its code, and Moodle found unreachable is noted.
        """
        function = self.name_of(called)
        record = CallRecord(function, called.writes)
        current_call_log().calls.append(record)
        started = self._clock()
        record.deadline = started + self._timeout_s
        cause: Cause | None = None
        try:
            yield record
        except MoodleError as error:
            record.outcome = _outcome(error.code)
            if error.code in REFUSED_BEFORE_RUNNING:
                record.sent = False
            if isinstance(error, MoodleUnreachable) and error.cause is not None:
                cause = error.cause
                self._note_unreachable(cause, function)
            raise
        finally:
            record.ms = round((self._clock() - started) * 1000, 1)
            if self._debug:
                log.info(
                    "moodle.call",
                    function=function,
                    param_names=sorted(params),
                    fields=fields,
                    ms=record.ms,
                    attempts=record.attempts,
                    outcome=record.outcome,
                    **(cause.fields() if cause else {}),
                )

    def _note_unreachable(self, cause: Cause, function: str) -> None:
        """One warning when Moodle stops answering, and one more only when the cause changes: repeats of the same
        cause are counted for :meth:`_note_answered`, not logged (each request's own line has its error code)."""
        with self._reach_lock:
            known, self._unreachable = self._unreachable, cause
            self._failed_calls += 1
            if known is None:
                self._unreachable_since = self._clock()
            if known is not None and known.kind == cause.kind:
                return
        log.warning("moodle.unreachable", moodle_base_url=self.public_url, function=function, **cause.fields())

    def _note_answered(self) -> None:
        """Moodle's REST server answered: if it had been unreachable, say once that it answers again."""
        if self._unreachable is None:
            return
        with self._reach_lock:
            if self._unreachable is None:
                return
            failed_calls, unreachable_s = self._failed_calls, round(self._clock() - self._unreachable_since, 1)
            self._unreachable, self._failed_calls = None, 0
        log.info(
            "moodle.reachable", moodle_base_url=self.public_url, failed_calls=failed_calls, unreachable_s=unreachable_s
        )

    def _send_with_retries(
        self, function: MoodleFunction, url: str, body: Callable[[], tuple[Any, dict[str, str]]], record: CallRecord
    ) -> _Reply:
        name = self.name_of(function)
        while True:
            record.attempts += 1
            data, headers = body()
            answer = self._try_once(name, url, data, headers, record)
            if isinstance(answer, _Reply):
                return answer
            if isinstance(answer, _Oversized):
                raise self._oversized_error(name, answer, function.writes)
            delay = BACKOFF_BASE_S * 2 ** (record.attempts - 1) * self._jitter()
            may_retry = function.retried or not answer.sent
            if not may_retry or record.attempts > self._max_retries or self._clock() + delay >= record.deadline:
                raise self._failure_error(name, answer, function.writes)
            self._sleep(delay)

    def _try_once(
        self, function: str, url: str, data: Any, headers: dict[str, str], record: CallRecord
    ) -> _Reply | _TransportFailure | _Oversized:
        remaining = record.deadline - self._clock()
        if remaining <= 0:  # a backoff sleep or a slow thread overran the deadline: nothing is sent
            cause = Cause(CauseKind.TIMEOUT, f"no answer from {self._address} within {self._timeout_s:g} s")
            return _TransportFailure(ErrorCode.MOODLE_TIMEOUT, "Moodle did not answer in time", False, False, cause)
        try:
            self.breaker.admit()
        except BreakerOpen as refusal:
            raise self._breaker_open_error(function, refusal.retry_after_s) from None
        reached = record.sent
        try:
            with self.bulkhead.slot(remaining):
                record.sent = True  # and left so when sending fails some other way: bytes may have gone out
                answer = self._post(url, data, headers, record.deadline - self._clock())
        except BulkheadFull:
            self.breaker.abandoned()
            raise _busy_error(function, self.bulkhead.limit) from None
        except BaseException:  # neither an answer nor a transport failure (an upload's file unreadable): no verdict
            self.breaker.abandoned()
            raise
        if isinstance(answer, _TransportFailure):
            record.sent = reached or answer.outcome_unknown
            self.breaker.failed(answer.cause.fields())
        else:
            self.breaker.succeeded()
        return answer

    def _post(
        self, path: str, data: Any, headers: dict[str, str], remaining: float
    ) -> _Reply | _TransportFailure | _Oversized:
        connect_s = min(remaining, MAX_CONNECT_TIMEOUT_S)
        # urllib3's timeouts bound each wait on the socket; an answer sent a byte now and then would pass them all.
        deadline = time.monotonic() + remaining
        try:
            # Straight to the thread's pool: no retries nor redirects of urllib3's (a redirected POST would lose its
            # body), and the answer read here, within the cap.
            response: BaseHTTPResponse = self._pool().urlopen(
                "POST",
                path,
                body=data,
                headers=self._headers | headers,
                retries=False,
                redirect=False,
                timeout=Timeout(connect=connect_s, read=remaining, total=remaining),
                preload_content=False,
            )
        except NewConnectionError as error:  # no connection, so no byte of the request reached Moodle
            cause = self._connect_cause(error)
            return _TransportFailure(ErrorCode.MOODLE_UNAVAILABLE, UNREACHABLE_MESSAGE, False, False, cause)
        except ConnectTimeoutError:  # of which urllib3 makes NewConnectionError a kind: caught after it
            cause = Cause(CauseKind.TIMEOUT, f"no connection to {self._address} within {connect_s:g} s")
            return _TransportFailure(
                ErrorCode.MOODLE_TIMEOUT, "Moodle did not accept a connection in time", False, False, cause
            )
        except ReadTimeoutError:
            return self._no_answer_in_time(remaining)
        except SSLError as error:
            return self._tls_failure(error)
        except ProtocolError:  # after connecting: the request may have gone out
            cause = Cause(CauseKind.RESET, f"the connection to {self._address} was closed before an answer came")
            return _TransportFailure(
                ErrorCode.MOODLE_UNAVAILABLE, "The connection to Moodle was reset", True, True, cause
            )
        except HTTPError as error:
            return self._broken_off(error)
        try:
            content = self._read_capped(response, deadline)
        except ReadTimeoutError:
            return self._no_answer_in_time(remaining)
        except SSLError as error:
            return self._tls_failure(error)
        except HTTPError as error:  # the answer broke off, or its encoding is not what it says
            return self._broken_off(error)
        if content is None:
            return _Oversized(response.status)
        reply = _Reply(response.status, response.headers, content)
        if reply.status_code in RETRYABLE_STATUSES:
            status = reply.status_code
            return _TransportFailure(
                {502: ErrorCode.BAD_GATEWAY, 503: ErrorCode.MOODLE_UNAVAILABLE, 504: ErrorCode.MOODLE_TIMEOUT}[status],
                f"Moodle answered HTTP {status}",
                sent=True,
                outcome_unknown=status != 503,  # 503 is Moodle's maintenance page: nothing was applied
                cause=self._http_cause(status),
                retry_after_s=_retry_after(reply),
            )
        return reply

    def _no_answer_in_time(self, remaining: float) -> _TransportFailure:
        cause = Cause(CauseKind.TIMEOUT, f"no answer from {self._address} within {remaining:.1f} s")
        return _TransportFailure(ErrorCode.MOODLE_TIMEOUT, "Moodle did not answer in time", True, True, cause)

    def _tls_failure(self, error: SSLError) -> _TransportFailure:
        cause = Cause(CauseKind.TLS, f"TLS with {self._address} failed: {_tls_reason(error)}")
        # A certificate is refused in the handshake, before any byte of the request; any other TLS failure may
        # come once it was sent (urllib3 wraps both alike), so a write is then not sent again.
        sent = not any(isinstance(link, ssl.SSLCertVerificationError) for link in _links(error))
        return _TransportFailure(ErrorCode.MOODLE_UNAVAILABLE, UNREACHABLE_MESSAGE, sent, sent, cause)

    def _broken_off(self, error: HTTPError) -> _TransportFailure:
        message = f"Moodle's answer could not be read ({type(error).__name__})"
        cause = Cause(CauseKind.RESET, f"the answer from {self._address} broke off ({type(error).__name__})")
        return _TransportFailure(ErrorCode.BAD_RESPONSE, message, True, True, cause)

    def _read_capped(self, response: BaseHTTPResponse, deadline: float) -> bytes | None:
        """The whole answer, or None past MOODLE_MAX_ANSWER_MB: a Content-Length over it is refused before reading,
        and a body without one (chunked) is read no further than the limit. The connection is then closed, not
        returned to the pool for another call, as the rest of the answer is still on it. ``ReadTimeoutError`` once
        ``deadline`` (``time.monotonic()``) has passed, the connection closed too."""
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self._max_answer_bytes:
            _discard(response)
            return None
        # Read in as few reads as the socket allows, inside the deadline and the bulkhead slot: each read lets go of
        # the GIL and, with many threads busy, may wait a whole switch interval to get it back, so small chunks made
        # a site info several waits, and many callers together got fewer answers than one alone.
        chunks, size = [], 0
        while chunk := response.read1(READ_CHUNK_BYTES, decode_content=True):  # what the socket has, one read
            if time.monotonic() >= deadline:
                _discard(response)
                raise ReadTimeoutError(None, None, "the answer did not end within the call's deadline")  # type: ignore[arg-type]
            size += len(chunk)
            if size > self._max_answer_bytes:
                _discard(response)
                return None
            chunks.append(chunk)
        response.release_conn()
        return b"".join(chunks)

    def _connect_cause(self, error: NewConnectionError) -> Cause:
        if isinstance(error, NameResolutionError):
            return Cause(CauseKind.DNS, f"the name {self._address.rpartition(':')[0]} does not resolve")
        if any(isinstance(link, ConnectionRefusedError) for link in _links(error)):
            return Cause(CauseKind.REFUSED, f"nothing accepts connections on {self._address} (connection refused)")
        system = next((link for link in _links(error) if isinstance(link, OSError) and link.strerror), None)
        said = system.strerror if system is not None else str(error)
        return Cause(CauseKind.NETWORK, f"no connection to {self._address}: {said}")

    def _http_cause(self, status: int) -> Cause:
        return Cause(CauseKind.HTTP, f"{self._address} answered HTTP {status}, not Moodle's REST server")

    def _parse(self, called: MoodleFunction, reply: _Reply) -> Any:
        status, function = reply.status_code, self.name_of(called)
        if 300 <= status < 400:
            raise self._bad_response(
                called, status, f"Moodle answered with a redirect (HTTP {status}); check MOODLE_BASE_URL"
            )
        try:
            body = loads(reply.content)
        except ValueError:
            raise self._bad_response(
                called,
                status,
                f"Moodle answered HTTP {status} with a body that is not JSON; "
                "check MOODLE_BASE_URL and that the REST protocol is enabled",
            ) from None
        if is_moodle_error(body):
            self._note_answered()
            raise error_from_moodle(body, function, (self._token,), _retry_after(reply))
        if status != 200:
            raise self._bad_response(called, status, f"Moodle answered HTTP {status}")
        self._note_answered()
        return body

    # -- errors -----------------------------------------------------------------------------------

    def _with_cause(self, details: dict[str, Any], cause: Cause) -> dict[str, Any]:
        """``details``, and with MOODLE_DEBUG the cause: callers never learn how the gateway reaches Moodle."""
        return details | cause.fields() if self._debug else details

    def _bad_response(self, called: MoodleFunction, status: int, message: str) -> MoodleError:
        """An answer that is not Moodle's: after a write, nothing says whether the function ran (a PHP fatal error
        after part of the work, a proxy's page), so its outcome is unknown."""
        details: dict[str, Any] = {"function": self.name_of(called), "moodle_status": status}
        if called.writes:
            details["outcome"] = OUTCOME_UNKNOWN
            message += "; the write may or may not have been applied"
        if status == 200:  # an answer, not Moodle's: the message says what was wrong with it
            return MoodleError(ErrorCode.BAD_RESPONSE, message, details)
        cause = self._http_cause(status)
        return MoodleUnreachable.because(cause, ErrorCode.BAD_RESPONSE, message, self._with_cause(details, cause))

    def _oversized_error(self, function: str, answer: _Oversized, writes: bool) -> MoodleError:
        limit_mb = self._max_answer_bytes // MIB
        details: dict[str, Any] = {"function": function, "moodle_status": answer.status_code}
        message = f"Moodle's answer is larger than {limit_mb} MiB (MOODLE_MAX_ANSWER_MB); it was not read"
        if writes:
            details["outcome"] = OUTCOME_UNKNOWN
            message += "; the write may or may not have been applied"
        return MoodleError(ErrorCode.BAD_RESPONSE, message, details)

    def _breaker_open_error(self, function: str, retry_after_s: int) -> MoodleError:
        message = f"Moodle failed repeatedly; calls to it are paused for {retry_after_s} s"
        details = {"function": function, "breaker": BreakerState.OPEN.value}
        headers = retry_after_header(retry_after_s)
        cause = self._unreachable  # what the failures that opened it were, as far as this process knows
        if cause is None:
            return MoodleError(ErrorCode.MOODLE_UNAVAILABLE, message, details, headers=headers)
        details = self._with_cause(details, cause)
        return MoodleUnreachable.because(cause, ErrorCode.MOODLE_UNAVAILABLE, message, details, headers=headers)

    def _failure_error(self, function: str, failure: _TransportFailure, writes: bool) -> MoodleError:
        details = self._with_cause({"function": function}, failure.cause)
        if failure.outcome_unknown and writes:
            details["outcome"] = OUTCOME_UNKNOWN
            message = failure.message + "; the write may or may not have been applied"
            # A reset after sending is reported like a timeout: the caller must check before writing again.
            status = 504 if failure.code == ErrorCode.MOODLE_UNAVAILABLE else None
            return MoodleUnreachable.because(failure.cause, failure.code, message, details, status=status)
        headers = retry_after_header(failure.retry_after_s) if failure.code.status == 503 else {}
        return MoodleUnreachable.because(failure.cause, failure.code, failure.message, details, headers=headers)

    def _pool(self) -> HTTPConnectionPool:
        # One pool of keep-alive connections per server thread.
        pool: HTTPConnectionPool | None = getattr(self._local, "pool", None)
        if pool is None:
            host, port = self._base_parts.hostname or "", self._base_parts.port
            if self._tls is not None:
                pool = HTTPSConnectionPool(host, port, maxsize=POOL_SIZE, ssl_context=self._tls)
            else:
                pool = HTTPConnectionPool(host, port, maxsize=POOL_SIZE)
            self._local.pool = pool
        return pool


def _has_shape(value: Any, shape: AnswerShape) -> bool:
    match shape:
        case AnswerShape.OBJECT:
            return isinstance(value, dict)
        case AnswerShape.LIST:
            return isinstance(value, list)
        case AnswerShape.INTEGER:
            return isinstance(value, int) and not isinstance(value, bool)
        case AnswerShape.NULL:
            return value is None
        case _:
            assert_never(shape)


def _outcome(code: ErrorCode | str) -> str:
    """A call's outcome label: the code when the table has it, else one word, so metrics labels stay a bounded set."""
    return code.value if isinstance(code, ErrorCode) else "othermoodleerror"


def _busy_error(function: str, limit: int) -> MoodleError:
    return MoodleError(
        ErrorCode.MOODLE_BUSY,
        f"Moodle is busy: {limit} calls to it are in flight; nothing was sent",
        {"function": function},
        headers=retry_after_header(BUSY_RETRY_AFTER_S),
    )


def _links(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps, as urllib3 wraps them: ``reason``, the first argument, the cause."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = (getattr(current, "reason", None), current.args[0] if current.args else None, current.__cause__)
        pending.extend(link for link in wrapped if isinstance(link, BaseException))


def _tls_reason(error: SSLError) -> str:
    """What TLS said, without the rest of urllib3's text: "certificate verify failed: self-signed certificate"."""
    failure = next((link for link in _links(error) if isinstance(link, ssl.SSLError)), None)
    if isinstance(failure, ssl.SSLCertVerificationError) and failure.verify_message:
        return f"certificate verify failed: {failure.verify_message}"
    reason = getattr(failure, "reason", None)  # OpenSSL's name for it, when it gave one: WRONG_VERSION_NUMBER
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(failure or error)


def _discard(response: BaseHTTPResponse) -> None:
    """Close the connection an answer is on, unread, and give its place in the pool back to a new one."""
    response.close()
    response.release_conn()


def _credentials_of(parts: SplitResult) -> dict[str, str]:
    """Basic auth for a user and a password in MOODLE_BASE_URL (a site behind a password), as browsers send it."""
    if parts.username is None or parts.password is None:
        return {}
    return make_headers(basic_auth=f"{unquote(parts.username)}:{unquote(parts.password)}")


def _trusted_context() -> ssl.SSLContext:
    """TLS that trusts the certificates certifi lists, and checks Moodle's is one for its name."""
    context = create_urllib3_context()
    context.load_verify_locations(certifi.where())
    return context


def _retry_after(reply: _Reply) -> int | None:
    value = reply.headers.get("Retry-After", "")
    return int(value) if value.isascii() and value.isdigit() else None


# Where a gateway on the sandbox has the sandbox post its Moodle events (the gateway's own webhook), when it knows:
# ``lms_api.main`` sets it from the port pserve serves on. Unset (tests building the app, a real Moodle): none posted.
SANDBOX_EVENTS_URL = "lms_api.sandbox_events_url"


class StandInMoodle(Protocol):
    """What ``MOODLE_SANDBOX`` starts: a Moodle web-service server on ``url`` that accepts ``token``."""

    @property
    def url(self) -> str: ...

    @property
    def token(self) -> str: ...


class StartStandIn(Protocol):
    """``MOODLE_SANDBOX``: a callable answering a :class:`StandInMoodle`. Called without arguments, or, when it takes
    them and the gateway knows its own webhook, with ``events_url`` and ``events_secret``: the stand-in may then post
    Moodle's events there (``Authorization: Bearer <events_secret>``), as Moodle's Event Trigger plugin would."""

    def __call__(self, *, events_url: str = ..., events_secret: str = ...) -> StandInMoodle: ...


def _takes_events_target(start: Callable[..., Any]) -> bool:
    """Whether ``start`` accepts ``events_url`` and ``events_secret``: a stand-in written before them does not."""
    try:
        parameters = inspect.signature(start).parameters
    except (TypeError, ValueError):  # a callable without a signature Python can read
        return False
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return True
    return {"events_url", "events_secret"} <= parameters.keys()


def _start_stand_in(config: Configurator, settings: Settings) -> StandInMoodle:
    """Start ``MOODLE_SANDBOX``, telling it where to post Moodle's events when the gateway knows its webhook."""
    # Imported only now, by its dotted name: a gateway on a real Moodle never loads the emulator.
    start: StartStandIn = config.maybe_dotted(settings.moodle_sandbox)
    events_url: str | None = config.registry.settings.get(SANDBOX_EVENTS_URL)
    secret = settings.webhook_secret
    if events_url and secret and _takes_events_target(start):
        stand_in = start(events_url=events_url, events_secret=secret)
    else:
        events_url = None
        stand_in = start()
    structlog.get_logger("lms_api").info(
        "sandbox.started",
        moodle_base_url=stand_in.url,
        events_url=events_url,
        note="MOODLE_BASE_URL is unset: using the Moodle sandbox",
    )
    return stand_in


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    if settings.moodle_base_url and settings.moodle_token:
        base_url, token = settings.moodle_base_url, settings.moodle_token
    else:
        stand_in = _start_stand_in(config, settings)
        base_url, token = stand_in.url, stand_in.token
    scrub_from_logs(token)
    config.include("lms_api.service_lookup")
    config.register_service(MoodleClient.from_settings(settings, base_url, token), MoodleClient)
