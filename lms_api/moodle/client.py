"""MoodleClient: the one synchronous client that talks to Moodle's REST server.

It bracket-encodes params, keeps the token in the POST body, gives each logical call one deadline
(retries included), retries only read-only functions, turns every failure into a :class:`MoodleError`
and checks a function is enabled before calling it. Its ``includeme`` registers one client per process as a
Pyramid service; views look it up with ``request.find_service(MoodleClient)``. Without ``MOODLE_BASE_URL``
(development only) the client talks to whatever ``MOODLE_SANDBOX`` starts, by default the built-in emulator,
imported only then.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, NamedTuple, Protocol

import requests
import structlog
from pyramid.config import Configurator
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.encoder import MultipartEncoder
from urllib3.exceptions import NewConnectionError

from lms_api.calllog import CallRecord, current_call_log
from lms_api.errors import ErrorCode
from lms_api.jsoncodec import loads
from lms_api.logging import scrub_from_logs
from lms_api.moodle.encoding import encode_params
from lms_api.moodle.errors import (
    MoodleError,
    MoodleRecord,
    clean_text,
    error_from_moodle,
    expect_list,
    expect_object,
    function_not_available,
    is_moodle_error,
    retry_after_header,
)
from lms_api.moodle.functions import READ_ONLY_FUNCTIONS, SITE_INFO, UPLOAD_FUNCTION
from lms_api.moodle.guard import BreakerOpen, BreakerState, Bulkhead, BulkheadFull, CircuitBreaker
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.moodle")

REST_PATH = "/webservice/rest/server.php"
UPLOAD_PATH = "/webservice/upload.php"
BACKOFF_BASE_S = 0.1
MAX_CONNECT_TIMEOUT_S = 3.0
READ_CHUNK_BYTES = 1 << 20  # an answer is read in reads this large at most
RETRYABLE_STATUSES = frozenset({502, 503, 504})
POOL_SIZE = 4
BUSY_RETRY_AFTER_S = 1
KNOWN_CODES = frozenset(code.value for code in ErrorCode)
UNBOUNDED = 1_000_000  # a client made without a bulkhead or a breaker (unit tests of other concerns)


@dataclass(frozen=True)
class UploadFile:
    """One file for upload.php, read from ``stream`` (rewound before each attempt)."""

    filename: str
    stream: IO[bytes]
    content_type: str = "application/octet-stream"


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
    retry_after_s: int | None = None


@dataclass(frozen=True)
class _Reply:
    """Moodle's HTTP answer, read whole."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


class Answer(NamedTuple):
    value: Any  # Moodle's answer, parsed
    body: bytes  # as Moodle sent it: JSON


class Moodle(Protocol):
    """What route services need of Moodle: :class:`MoodleClient`, or the read cache in front of it."""

    @property
    def max_input_vars(self) -> int: ...

    def call(self, function: str, params: Mapping[str, Any] | None = None) -> Any: ...

    def require(self, *functions: str) -> None: ...

    def clean(self, text: str) -> str: ...


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._endpoint = self.base_url + REST_PATH
        self._upload_url = self.base_url + UPLOAD_PATH
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
        self._functions_expire_at = 0.0
        self._functions_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str, token: str, **overrides: Any) -> MoodleClient:
        """The client the gateway uses for ``settings``; ``overrides`` replace keyword arguments (tests: a clock)."""
        options: dict[str, Any] = {
            "timeout_s": settings.moodle_timeout_ms / 1000,
            "max_retries": settings.moodle_max_retries,
            "functions_ttl_s": settings.moodle_functions_ttl_s,
            "max_input_vars": settings.moodle_max_input_vars,
            "debug": settings.moodle_debug,
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

    def call(self, function: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call ``function`` if the site offers it; answer 501 ``functionnotavailable`` without calling otherwise."""
        return self.answer(function, params).value

    def answer(self, function: str, params: Mapping[str, Any] | None = None) -> Answer:
        """:meth:`call`, with the answer's bytes as Moodle sent them (the read cache keeps those, not a copy)."""
        self.require(function)
        try:
            return self._call(function, params or {})
        except MoodleError as error:
            if error.code == "accessexception":
                self.forget_functions()
            raise

    def require(self, *functions: str) -> None:
        """501 ``functionnotavailable`` for the first of ``functions`` the site does not offer."""
        available = self.available_functions()
        for function in functions:
            if function not in available:
                raise function_not_available(function)

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

    def site_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.site_info_answer().value
        return info

    def site_info_answer(self) -> Answer:
        """The site info, and its bytes; the token's function list is read from it."""
        answer = self._call(SITE_INFO, {})
        info = expect_object(answer.value, SITE_INFO)
        functions = expect_list(info.get("functions"), SITE_INFO, key="name")
        expect_list(info.get("advancedfeatures", []), SITE_INFO)  # dumped record by record by the route
        self._remember_functions(functions)
        return answer

    def available_functions(self) -> frozenset[str]:
        """The functions of the token's service, from site info, cached for ``functions_ttl_s``."""
        if self._functions is not None and self._clock() < self._functions_expire_at:
            return self._functions
        with self._functions_lock:  # one site-info fetch at a time, the others reuse its answer
            if self._functions is None or self._clock() >= self._functions_expire_at:
                self.site_info()
            assert self._functions is not None
            return self._functions

    def upload(self, files: Sequence[UploadFile], itemid: int = 0) -> list[dict[str, Any]]:
        """Store ``files`` in the token user's draft area through ``upload.php``; ``itemid`` 0 starts a new one.

        The body is streamed from each file object, so a large file is never held in memory. Moodle's answer
        is one entry per file; an entry may be a per-file error, which the caller must look at.
        """

        def body() -> tuple[MultipartEncoder, dict[str, str]]:
            fields: list[tuple[str, Any]] = [("token", self._token), ("itemid", str(itemid)), ("filepath", "/")]
            for number, upload in enumerate(files, start=1):
                upload.stream.seek(0)
                fields.append((f"file_{number}", (upload.filename, upload.stream, upload.content_type)))
            encoder = MultipartEncoder(fields)
            return encoder, {"Content-Type": encoder.content_type}

        with self._recorded(UPLOAD_FUNCTION, {"files": files, "itemid": itemid}, 3 + len(files)) as record:
            answer = self._parse(
                UPLOAD_FUNCTION, self._send_with_retries(UPLOAD_FUNCTION, self._upload_url, body, record)
            )
        return expect_list(answer, UPLOAD_FUNCTION)

    # -- one logical call -------------------------------------------------------------------------

    def _remember_functions(self, functions: list[MoodleRecord]) -> None:
        self._functions = frozenset(entry["name"] for entry in functions) | {SITE_INFO}
        self._functions_expire_at = self._clock() + self._functions_ttl_s

    def _call(self, function: str, params: Mapping[str, Any]) -> Answer:
        form = [("wstoken", self._token), ("wsfunction", function), ("moodlewsrestformat", "json")]
        form += encode_params(params)
        with self._recorded(function, params, len(form) - 3) as record:
            answer = self._send_with_retries(function, self._endpoint, lambda: (form, {}), record)
            return Answer(self._parse(function, answer), answer.content)

    @contextmanager
    def _recorded(self, function: str, params: Mapping[str, Any], fields: int) -> Iterator[CallRecord]:
        """Account one logical call for the request's summary line and, with MOODLE_DEBUG, its own line."""
        record = CallRecord(function)
        current_call_log().calls.append(record)
        started = self._clock()
        record.deadline = started + self._timeout_s
        try:
            yield record
            record.outcome = "ok"
        except MoodleError as error:
            # A code of the table, or one word for Moodle's others: metrics labels stay a bounded set.
            record.outcome = str(error.code) if error.code in KNOWN_CODES else "othermoodleerror"
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
                )

    def _send_with_retries(
        self, function: str, url: str, body: Callable[[], tuple[Any, dict[str, str]]], record: CallRecord
    ) -> _Reply:
        read_only = function in READ_ONLY_FUNCTIONS
        while True:
            record.attempts += 1
            data, headers = body()
            answer = self._try_once(function, url, data, headers, record)
            if isinstance(answer, _Reply):
                return answer
            delay = BACKOFF_BASE_S * 2 ** (record.attempts - 1) * self._jitter()
            may_retry = read_only or not answer.sent
            if not may_retry or record.attempts > self._max_retries or self._clock() + delay >= record.deadline:
                raise _failure_error(function, answer, read_only)
            self._sleep(delay)

    def _try_once(
        self, function: str, url: str, data: Any, headers: dict[str, str], record: CallRecord
    ) -> _Reply | _TransportFailure:
        remaining = record.deadline - self._clock()
        if remaining <= 0:  # a backoff sleep or a slow thread overran the deadline: nothing is sent
            return _TransportFailure(ErrorCode.MOODLE_TIMEOUT, "Moodle did not answer in time", False, False)
        try:
            self.breaker.admit()
        except BreakerOpen as refusal:
            raise _breaker_open_error(function, refusal.retry_after_s) from None
        try:
            with self.bulkhead.slot(remaining):
                record.sent = True
                answer = self._post(url, data, headers, record.deadline - self._clock())
        except BulkheadFull:
            self.breaker.abandoned()
            raise _busy_error(function, self.bulkhead.limit) from None
        except BaseException:  # neither an answer nor a transport failure (an upload's file unreadable): no verdict
            self.breaker.abandoned()
            raise
        if isinstance(answer, _TransportFailure):
            self.breaker.failed()
        else:
            self.breaker.succeeded()
        return answer

    def _post(self, url: str, data: Any, headers: dict[str, str], remaining: float) -> _Reply | _TransportFailure:
        try:
            # Straight to the pooled transport: no session cookies, hooks, proxies from the environment or
            # redirects (a POST would lose its body), which also halves requests' own cost per call.
            prepared = requests.Request("POST", url, data=data, headers=headers).prepare()
            response = self._transport().send(prepared, timeout=(min(remaining, MAX_CONNECT_TIMEOUT_S), remaining))
            # Read whole, inside the deadline and the bulkhead slot, in as few reads as the socket allows: each read
            # lets go of the GIL and, with many threads busy, may wait up to 5 ms to get it back. requests' own
            # 10 KB chunks made a 51 KB site info six reads, and 16 callers got fewer answers than one.
            reply = _Reply(response.status_code, response.headers, b"".join(response.iter_content(READ_CHUNK_BYTES)))
        except requests.ConnectTimeout:
            return _TransportFailure(
                ErrorCode.MOODLE_TIMEOUT, "Moodle did not accept a connection in time", False, False
            )
        except requests.ReadTimeout:
            return _TransportFailure(ErrorCode.MOODLE_TIMEOUT, "Moodle did not answer in time", True, True)
        except requests.ConnectionError as error:
            if _never_connected(error):
                return _TransportFailure(ErrorCode.MOODLE_UNAVAILABLE, "Moodle refused the connection", False, False)
            return _TransportFailure(ErrorCode.MOODLE_UNAVAILABLE, "The connection to Moodle was reset", True, True)
        except requests.RequestException as error:
            message = f"Moodle's answer could not be read ({type(error).__name__})"
            return _TransportFailure(ErrorCode.BAD_RESPONSE, message, True, True)
        if reply.status_code in RETRYABLE_STATUSES:
            status = reply.status_code
            return _TransportFailure(
                {502: ErrorCode.BAD_GATEWAY, 503: ErrorCode.MOODLE_UNAVAILABLE, 504: ErrorCode.MOODLE_TIMEOUT}[status],
                f"Moodle answered HTTP {status}",
                sent=True,
                outcome_unknown=status != 503,  # 503 is Moodle's maintenance page: nothing was applied
                retry_after_s=_retry_after(reply),
            )
        return reply

    def _parse(self, function: str, reply: _Reply) -> Any:
        status = reply.status_code
        if 300 <= status < 400:
            raise _bad_response(
                function, status, f"Moodle answered with a redirect (HTTP {status}); check MOODLE_BASE_URL"
            )
        try:
            body = loads(reply.content)
        except ValueError:
            raise _bad_response(
                function,
                status,
                f"Moodle answered HTTP {status} with a body that is not JSON; "
                "check MOODLE_BASE_URL and that the REST protocol is enabled",
            ) from None
        if is_moodle_error(body):
            raise error_from_moodle(body, function, (self._token,), _retry_after(reply))
        if status != 200:
            raise _bad_response(function, status, f"Moodle answered HTTP {status}")
        return body

    def _transport(self) -> HTTPAdapter:
        # One pool of keep-alive connections per server thread.
        adapter: HTTPAdapter | None = getattr(self._local, "adapter", None)
        if adapter is None:
            adapter = self._local.adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        return adapter


def _bad_response(function: str, status: int, message: str) -> MoodleError:
    return MoodleError(ErrorCode.BAD_RESPONSE, message, {"function": function, "moodle_status": status})


def _breaker_open_error(function: str, retry_after_s: int) -> MoodleError:
    return MoodleError(
        ErrorCode.MOODLE_UNAVAILABLE,
        f"Moodle failed repeatedly; calls to it are paused for {retry_after_s} s",
        {"function": function, "breaker": BreakerState.OPEN.value},
        headers=retry_after_header(retry_after_s),
    )


def _busy_error(function: str, limit: int) -> MoodleError:
    return MoodleError(
        ErrorCode.MOODLE_BUSY,
        f"Moodle is busy: {limit} calls to it are in flight; nothing was sent",
        {"function": function},
        headers=retry_after_header(BUSY_RETRY_AFTER_S),
    )


def _failure_error(function: str, failure: _TransportFailure, read_only: bool) -> MoodleError:
    details: dict[str, Any] = {"function": function}
    if failure.outcome_unknown and not read_only:
        details["outcome"] = "unknown"
        message = failure.message + "; the write may or may not have been applied"
        # A reset after sending is reported like a timeout: the caller must check before writing again.
        return MoodleError(
            failure.code, message, details, status=504 if failure.code == ErrorCode.MOODLE_UNAVAILABLE else None
        )
    headers = retry_after_header(failure.retry_after_s) if failure.code.status == 503 else {}
    return MoodleError(failure.code, failure.message, details, headers=headers)


def _never_connected(error: requests.ConnectionError) -> bool:
    """True when no connection was made, so no byte of the request reached Moodle."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, NewConnectionError) or isinstance(getattr(cause, "reason", None), NewConnectionError):
            return True
        cause = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else cause.__cause__
    return False


def _retry_after(reply: _Reply) -> int | None:
    value = reply.headers.get("Retry-After", "")
    return int(value) if value.isascii() and value.isdigit() else None


class StandInMoodle(Protocol):
    """What ``MOODLE_SANDBOX`` starts: a Moodle web-service server on ``url`` that accepts ``token``."""

    @property
    def url(self) -> str: ...

    @property
    def token(self) -> str: ...


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    if settings.moodle_base_url and settings.moodle_token:
        base_url, token = settings.moodle_base_url, settings.moodle_token
    else:
        # Imported only now, by its dotted name: a gateway on a real Moodle never loads the emulator.
        stand_in: StandInMoodle = config.maybe_dotted(settings.moodle_sandbox)()
        base_url, token = stand_in.url, stand_in.token
        structlog.get_logger("lms_api").info(
            "sandbox.started", moodle_base_url=base_url, note="MOODLE_BASE_URL is unset: using the Moodle sandbox"
        )
    scrub_from_logs(token)
    config.include("lms_api.service_lookup")
    config.register_service(MoodleClient.from_settings(settings, base_url, token), MoodleClient)
