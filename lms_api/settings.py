"""Typed settings resolved from the environment, a ``.env`` file and the ini file.

Precedence, highest first: the process environment, ``.env``, the ini's ``[app:main]`` section, the default.
Environment keys are UPPER_SNAKE (``MOODLE_TOKEN``); the ini spells the same key in lower case
(``moodle_token``). The first layer that has a key decides, an empty value meaning the default: ``MOODLE_BASE_URL=``
in the environment unsets what ``.env`` says. Every value is checked once at start-up, and every bad or missing one
is reported together in one :class:`SettingsError`, a problem per key; secret values are never repeated in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, dataclass_transform, overload
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from dotenv import dotenv_values
from pyramid.config import Configurator

from lms_api.moodle.functions import CacheGroup, MoodleFunction

DEVELOPMENT = "development"
PRODUCTION = "production"
MIB = 1 << 20  # the *_MB settings are in MiB

# Used only under development.ini when JWT_SECRET is unset, so `lms-api token` and the gateway agree
# without any set-up. Production refuses to start without a real key.
DEVELOPMENT_JWT_SECRET = "lms-api-development-only-secret-never-use-in-production-0123456789"

# RFC 7518 3.2: an HMAC key at least as long as the hash output.
MIN_JWT_SECRET_LENGTH = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGORITHMS = tuple(MIN_JWT_SECRET_LENGTH)
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
SUPPORTED_JWT_ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS
DEFAULT_JWT_LEEWAY_S = 30
PublicKey = RSAPublicKey | EllipticCurvePublicKey
# A Moodle role's short name, as MOODLE_ROLE_IDS and the enrol route's roleid take it.
ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
T = TypeVar("T")


class SettingsError(Exception):
    """Settings are missing or malformed: ``problems`` has one message per key, each naming it."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rate:
    """A budget of ``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s}s"


def _text(key: str, raw: str) -> str:
    return raw.strip()


def _whole_number(minimum: int) -> Callable[[str, str], int]:
    def parse(key: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{key} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{key} must be at least {minimum}, got {value}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(key: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{key} must be true or false, got {raw!r}")


def _base_url(key: str, raw: str) -> str:
    parts = urlsplit(raw.strip().rstrip("/"))
    parts = parts._replace(scheme=parts.scheme.lower())  # HTTP:// is http://
    url = parts.geturl()
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{key} must be an http:// or https:// URL such as https://moodle.example.edu")
    if parts.query or parts.fragment:
        raise SettingsError(f"{key} must not carry a query string or fragment")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _https_url(key: str, raw: str) -> str:
    url = raw.strip()
    parts = urlsplit(url)
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))):
        raise SettingsError(f"{key} must be an https:// URL (http:// only on loopback)")
    return url


def _public_key(key: str, raw: str) -> PublicKey:
    """PEM text, or the path of a PEM file, loaded once here: an RSA or EC public key."""
    text = raw.strip()
    if not text.startswith("-----BEGIN"):
        path = Path(text)
        if not path.is_file():
            raise SettingsError(f"{key} must be a PEM public key or the path of a PEM file")
        text = path.read_text().strip()
    text = text.replace("\\n", "\n")  # a PEM in one .env line, with literal \n
    try:
        loaded = load_pem_public_key(text.encode())
    except ValueError:
        raise SettingsError(f"{key} is not a readable PEM public key") from None
    if not isinstance(loaded, (RSAPublicKey, EllipticCurvePublicKey)):
        raise SettingsError(f"{key} must be an RSA or EC public key")
    return loaded


_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _rate(key: str, raw: str) -> Rate:
    count, _, period = raw.strip().partition("/")
    if not count.strip().isdigit() or int(count) < 1 or period.strip() not in _PERIODS:
        raise SettingsError(f"{key} must look like '600/minute' (per second, minute, hour or day), got {raw!r}")
    return Rate(int(count), _PERIODS[period.strip()])


def _networks(key: str, raw: str) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ip_network(part, strict=False) for part in re.split(r"[\s,]+", raw.strip()) if part)
    except ValueError as error:
        raise SettingsError(f"{key} must list IP addresses or networks (10.0.0.0/8, ::1): {error}") from None


def _origins(key: str, raw: str) -> tuple[str, ...]:
    origins = tuple(part.rstrip("/") for part in re.split(r"[\s,]+", raw.strip()) if part)
    for origin in origins:
        parts = urlsplit(origin)
        if origin == "*" or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise SettingsError(f"{key} lists exact origins such as https://app.example.edu (no '*'), got {origin!r}")
    return origins


def _redis_url(key: str, raw: str) -> str:
    url = raw.strip()
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(f"{key} must be a redis://, rediss:// or unix:// URL")
    return url


def _algorithms(key: str, raw: str) -> tuple[str, ...]:
    names = tuple(name for name in re.split(r"[\s,]+", raw.strip()) if name)
    if not names:
        raise SettingsError(f"{key} must name at least one algorithm")
    for name in names:
        if name not in SUPPORTED_JWT_ALGORITHMS:
            raise SettingsError(f"{key}: {name!r} is not supported; use one of {', '.join(SUPPORTED_JWT_ALGORITHMS)}")
    return names


# Moodle's default archetype role ids; MOODLE_ROLE_IDS overrides or extends them for sites that differ.
DEFAULT_ROLE_IDS = {"manager": 1, "editingteacher": 3, "teacher": 4, "student": 5}
# The function of the public local_sync_service plugin; Moodle core has none that creates a file resource.
DEFAULT_ATTACH_FUNCTION = MoodleFunction.ATTACH_FILE.value
_FUNCTION_NAME = re.compile(r"[a-z][a-z0-9_]{2,165}")


def _role_ids(key: str, raw: str) -> Mapping[str, int]:
    roles = dict(DEFAULT_ROLE_IDS)
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, separator, number = (piece.strip() for piece in entry.partition("="))
        if not separator or not ROLE_NAME.fullmatch(name) or not number.isdigit() or int(number) < 1:
            raise SettingsError(f"{key} must look like 'student=5,teacher=4', got {entry!r}")
        roles[name] = int(number)
    return MappingProxyType(roles)


# The read cache's groups, each with its time to live in seconds (0: not cached).
CACHE_GROUPS = tuple(CacheGroup)
DEFAULT_CACHE_TTLS = "siteinfo=300,courses=60,users=30,notifications=0"


def _cache_ttls(key: str, raw: str) -> Mapping[str, int]:
    return MappingProxyType(_group_ttls(key, DEFAULT_CACHE_TTLS) | _group_ttls(key, raw))


def _group_ttls(key: str, raw: str) -> dict[str, int]:
    ttls: dict[str, int] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, separator, seconds = (piece.strip() for piece in entry.partition("="))
        if not separator or name not in CACHE_GROUPS or not seconds.isdigit():
            raise SettingsError(
                f"{key} must look like '{DEFAULT_CACHE_TTLS}' (groups: {', '.join(CACHE_GROUPS)}; seconds, 0 for off), "
                f"got {entry!r}"
            )
        ttls[name] = int(seconds)
    return ttls


# Moodle's course formats as a 5.0 site has them enabled by default; a site with other plugins lists its own.
DEFAULT_COURSE_FORMATS = "topics,weeks,social,singleactivity"
# What ``enrol:write`` may assign; any other known role (``manager``) needs ``admin`` as well.
DEFAULT_ASSIGNABLE_ROLES = "student,teacher,editingteacher"
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _names(pattern: re.Pattern[str], what: str) -> Callable[[str, str], tuple[str, ...]]:
    def parse(key: str, raw: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
        wrong = [name for name in names if not pattern.fullmatch(name)]
        if wrong or not names:
            raise SettingsError(f"{key} must list {what}, comma-separated, got {raw!r}")
        return names

    return parse


@dataclass(frozen=True)
class PasswordPolicy:
    """Moodle's password policy (Site administration > Security > Site security settings), as the site sets it: the
    least length, the least counts of digits, lower-case, upper-case and non-alphanumeric characters, and the most
    identical characters in a row (0: any)."""

    length: int = 8
    digits: int = 1
    lower: int = 1
    upper: int = 1
    nonalphanumeric: int = 1
    consecutive: int = 0

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name)}" for name in _POLICY_RULES)


_POLICY_RULES = tuple(rule.name for rule in fields(PasswordPolicy))
DEFAULT_PASSWORD_POLICY = str(PasswordPolicy())


def _password_policy(key: str, raw: str) -> PasswordPolicy:
    rules: dict[str, int] = {}
    for part in raw.split(","):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not part.strip():
            continue
        if not equals or name not in _POLICY_RULES or not value.strip().isdigit():
            raise SettingsError(
                f"{key} must be rules such as {DEFAULT_PASSWORD_POLICY} (any of {', '.join(_POLICY_RULES)}, each a "
                f"whole number), got {raw!r}"
            )
        rules[name] = int(value)
    return PasswordPolicy(**rules)


def _user_ids(key: str, raw: str) -> tuple[int, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise SettingsError(f"{key} must list Moodle user ids, comma-separated, such as 2,17, got {raw!r}")
    return tuple(dict.fromkeys(int(part) for part in parts))


DEFAULT_AUTH_PLUGINS = "manual,nologin,email,cas,db,ldap,lti,none,oauth2,shibboleth"
_LANG_NAME = re.compile(r"[a-z]{2,3}(_[a-z0-9]+)*")


def _public_url(key: str, raw: str) -> str:
    url = _base_url(key, raw)
    if urlsplit(url).path:
        raise SettingsError(f"{key} must be the gateway's origin as callers reach it, e.g. https://api.example.edu")
    return url


def _function_name(key: str, raw: str) -> str:
    name = raw.strip()
    if not _FUNCTION_NAME.fullmatch(name):
        raise SettingsError(f"{key} must be a Moodle web-service function name, got {raw!r}")
    return name


def _dotted_name(key: str, raw: str) -> str:
    name = raw.strip()
    if not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?", name):
        raise SettingsError(f"{key} must be a dotted name such as package.module:function, got {raw!r}")
    return name


MIN_WEBHOOK_SECRET_LENGTH = 32
# Under development.ini on the sandbox when WEBHOOK_SECRET is unset: the sandbox posts its events with it.
DEVELOPMENT_WEBHOOK_SECRET = "lms-api-development-only-webhook-secret-0123456789"


def _webhook_secret(key: str, raw: str) -> str:
    secret = raw.strip()
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        raise SettingsError(f"{key} must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters long")
    return secret


def _jobs_engine(key: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("embedded", "rq"):
        raise SettingsError(f"{key} must be 'embedded' or 'rq', got {raw!r}")
    return value


def _log_format(key: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "console"):
        raise SettingsError(f"{key} must be 'json' or 'console', got {raw!r}")
    return value


@dataclass(frozen=True)
class Key:
    """How one setting is read and documented; its name is its ``Settings`` field's, in upper case."""

    parse: Callable[[str, str], Any]
    fallback: str | None  # the raw value an unset key takes, parsed like any other; None: the setting stays unset
    meaning: str  # one line, README's words
    note: str = ""  # what an unset key means beyond its fallback, shown next to it
    worked_out: str = ""  # how the loader works the value out when the key is unset
    secret: bool = False  # never logged, returned or repeated in an error

    @property
    def shown_default(self) -> str:
        """README's default column."""
        if self.worked_out:
            return self.worked_out
        shown = f"`{self.fallback}`" if self.fallback else "—"
        return f"{shown} ({self.note})" if self.note else shown


_KEY = "lms_api.setting"  # the metadata of a Settings field that is a setting


@overload
def setting(
    parse: Callable[[str, str], T], fallback: str, *, meaning: str, note: str = "", secret: bool = False
) -> T: ...
@overload
def setting(parse: Callable[[str, str], T], *, meaning: str, worked_out: str, secret: bool = False) -> T: ...
@overload
def setting(parse: Callable[[str, str], T], *, meaning: str, note: str = "", secret: bool = False) -> T | None: ...
def setting(
    parse: Callable[[str, str], Any],
    fallback: str | None = None,
    *,
    meaning: str,
    note: str = "",
    worked_out: str = "",
    secret: bool = False,
) -> Any:
    """Declare a setting as a ``Settings`` field: its parser (which also gives the field's type, as mypy checks), the
    raw value it takes when unset, and its meaning. Without a fallback the field is ``None`` when unset, unless the
    loader works it out (``worked_out`` says how)."""
    return field(metadata={_KEY: Key(parse, fallback, meaning, note, worked_out, secret)})


@dataclass_transform(frozen_default=True, field_specifiers=(setting, field))
def _settings_class(cls: type[T]) -> type[T]:
    return dataclass(frozen=True)(cls)


@_settings_class
class Settings:
    """Every setting, declared once: the loader reads each field declared with :func:`setting` from its key (the field
    ``moodle_timeout_ms`` from ``MOODLE_TIMEOUT_MS`` in the environment or ``.env``, ``moodle_timeout_ms`` in the ini),
    and README's configuration table is printed from them in this order (``scripts/readme_tables.py``).
    ``environment`` and the fields after the settings are the loader's own conclusions."""

    environment: str
    moodle_base_url: str | None = setting(
        _base_url,
        meaning="Moodle's root URL; `production.ini` takes `http://` only on loopback",
        note="sandbox under `development.ini`",
    )
    moodle_allow_insecure: bool = setting(
        _boolean,
        "false",
        meaning="`true` lets `production.ini` use an `http://` Moodle elsewhere "
        "(the token then crosses the network in clear)",
    )
    moodle_token: str | None = setting(
        _text, meaning="the gateway's web-service token; secret, never logged or returned", secret=True
    )
    moodle_timeout_ms: int = setting(
        _whole_number(1), "15000", meaning="deadline of one logical Moodle call, retries included"
    )
    moodle_debug: bool = setting(
        _boolean,
        "false",
        meaning="log one line per Moodle call: function, parameter names, duration, attempts (never values); "
        "add why Moodle could not be reached to the details of 502/503/504 answers "
        "(`details.cause`, `details.reason`)",
    )
    moodle_max_retries: int = setting(_whole_number(0), "2", meaning="extra attempts for read-only functions")
    moodle_functions_ttl_s: int = setting(
        _whole_number(1), "300", meaning="how long the token's function list (from site info) is trusted"
    )
    # Moodle requires at least 5000; the room for one enrolment is 9.
    moodle_max_input_vars: int = setting(
        _whole_number(9),
        "5000",
        meaning="PHP `max_input_vars` of the Moodle server; bigger enrolment batches are split to fit",
    )
    moodle_max_upload_mb: int = setting(
        _whole_number(1), "50", meaning="largest upload, in MiB, for all files of one request together"
    )
    moodle_max_answer_mb: int = setting(
        _whole_number(1),
        "32",
        meaning="largest answer read from Moodle, in MiB: a `Content-Length` over it is refused unread, a chunked "
        "answer is read no further; either is a `502 badresponse`, not retried, and its connection is closed rather "
        "than reused",
    )
    max_json_body_kb: int = setting(
        _whole_number(1),
        "1024",
        meaning="largest request body, in KiB, on every API route but the upload; refused with `413 bodytoolarge` "
        "before the token is checked",
    )
    moodle_attach_function: str = setting(
        _function_name, DEFAULT_ATTACH_FUNCTION, meaning="the function `files/attach` calls"
    )
    moodle_role_ids: Mapping[str, int] = setting(
        _role_ids,
        "",
        meaning="role names for `enrol`, e.g. `student=5,teacher=4,tutor=9`; adds to or overrides Moodle's defaults; "
        "only these roles can be assigned",
    )
    moodle_assignable_roles: tuple[str, ...] = setting(
        _names(ROLE_NAME, "role names"),
        DEFAULT_ASSIGNABLE_ROLES,
        meaning="the roles `enrol:write` may assign (names from `MOODLE_ROLE_IDS`); any other known role (`manager`) "
        "needs `admin` as well",
    )
    moodle_course_formats: tuple[str, ...] = setting(
        _names(_PLUGIN_NAME, "course format plugin names"),
        DEFAULT_COURSE_FORMATS,
        meaning="the course formats the site offers; `format` on `POST`/`PATCH /courses` must be one of them",
    )
    moodle_password_policy: PasswordPolicy = setting(
        _password_policy,
        DEFAULT_PASSWORD_POLICY,
        meaning="the site's password policy, checked before a user is created or given a password: `length`, "
        "`digits`, `lower`, `upper`, `nonalphanumeric` (least counts) and `consecutive` (most identical characters in "
        "a row, 0 for any); rules left out keep Moodle's default",
    )
    moodle_auth_plugins: tuple[str, ...] = setting(
        _names(_PLUGIN_NAME, "authentication plugin names"),
        DEFAULT_AUTH_PLUGINS,
        meaning="the authentication plugins installed on the site; a new user's `auth` must be one of them",
    )
    moodle_admin_user_ids: tuple[int, ...] = setting(
        _user_ids,
        "2",
        meaning="the site's administrators and the gateway's own Moodle user, by id: changing them through "
        "`PATCH /users` needs the `admin` scope",
    )
    moodle_langs: tuple[str, ...] = setting(
        _names(_LANG_NAME, "language codes"),
        "en",
        meaning="the language packs installed on the site; a user's `lang` must be one of them",
    )
    jwt_secret: str | None = setting(
        _text,
        meaning="HMAC key for caller JWTs: at least 32 bytes for HS256, 48 for HS384, 64 for HS512",
        note="a development key under `development.ini` on the sandbox",
        secret=True,
    )
    jwt_public_key: PublicKey | None = setting(
        _public_key,
        meaning="an identity provider's RSA or EC public key: PEM text (newlines may be written `\\n`) "
        "or a PEM file's path",
    )
    jwt_jwks_url: str | None = setting(
        _https_url,
        meaning="an identity provider's JWKS URL (`https://`); keys are cached and re-read for an unknown `kid` "
        "at most once a minute",
    )
    jwt_algorithms: tuple[str, ...] = setting(
        _algorithms,
        meaning="accepted algorithms, comma-separated "
        "(`HS256/384/512`, `RS256/384/512`, `PS256/384/512`, `ES256/384/512`)",
        worked_out="from the keys: `HS256` for a secret, `RS256` or `ES256` for a public key, `RS256,ES256` for a JWKS",
    )
    jwt_audience: str | None = setting(_text, meaning="when set, tokens must carry this `aud`")
    jwt_issuer: str | None = setting(_text, meaning="when set, tokens must carry this `iss`")
    jwt_leeway_s: int = setting(
        _whole_number(0), str(DEFAULT_JWT_LEEWAY_S), meaning="clock skew allowed on `exp`, `nbf` and `iat`"
    )
    rate_limit_read: Rate = setting(
        _rate,
        "600/minute",
        meaning="reads (GET) per caller (`sub`); `N/second`, `N/minute`, `N/hour` or `N/day`",
    )
    rate_limit_write: Rate = setting(_rate, "120/minute", meaning="writes (every method but GET and HEAD) per caller")
    rate_limit_unauthenticated: Rate = setting(
        _rate, "300/minute", meaning="requests that fail authentication, per client address"
    )
    redis_url: str | None = setting(
        _redis_url,
        meaning="`redis://…` shared by every replica, so N replicas enforce one budget; secret (may hold a password)",
        note="counters in each process",
        secret=True,
    )
    idempotency_ttl_s: int = setting(
        _whole_number(1),
        "86400",
        meaning="how long the answer to a write sent with an `Idempotency-Key` is kept for its replays",
    )
    idempotency_required: bool = setting(
        _boolean, "false", meaning="`true`: every write must carry an `Idempotency-Key` (`428` without one)"
    )
    idempotency_lock_s: int = setting(
        _whole_number(1),
        "1200",
        meaning="the longest a key stays in progress; keep it over the longest write (nginx's `proxy_read_timeout`, "
        "990 s): past it, the write is taken as stopped with its outcome unknown",
    )
    idempotency_max_mb: int = setting(
        _whole_number(1),
        "32",
        meaning="memory for the kept answers in the process, least recently used out first (with `REDIS_URL`, "
        "Redis keeps them)",
    )
    jobs_engine: str = setting(
        _jobs_engine,
        meaning="`embedded`: jobs run in the gateway's process, lost when it stops; `rq`: queued in `REDIS_URL`'s "
        "Redis, run by `lms-api worker`, read and cancelled by any replica",
        worked_out="`rq` with `REDIS_URL`, else `embedded`",
    )
    jobs_workers: int = setting(
        _whole_number(1),
        "2",
        meaning="threads of the process that run background jobs (`Prefer: respond-async`), apart from waitress's",
    )
    jobs_ttl_s: int = setting(
        _whole_number(1), "86400", meaning="how long a finished background job is kept for `GET /api/moodle/jobs`"
    )
    jobs_worker_ttl_s: int = setting(
        _whole_number(3),
        "60",
        meaning="with `JOBS_ENGINE=rq`, how long a running job stays alive without a sign of its worker (which gives "
        "one every second): past it, the job is lost (`joblost`); keep the hosts' clocks closer than this",
    )
    jobs_sync_max_items: int = setting(
        _whole_number(1),
        "1000",
        meaning="with `JOBS_FORCE_ASYNC`, a write of more items (enrolments, users) is run as a background job",
    )
    jobs_force_async: bool = setting(
        _boolean,
        "false",
        meaning="`true`: a write over `JOBS_SYNC_MAX_ITEMS` items is answered `202` with a job even without "
        "`Prefer: respond-async`",
    )
    webhook_secret: str | None = setting(
        _webhook_secret,
        meaning="the secret Moodle's Event Trigger sends to `POST /api/moodle/webhooks/moodle` "
        "(`Authorization: Bearer <secret>`), or signs its body with (`X-Signature`); at least 32 characters",
        note="the webhook route answers `404`; a development secret under `development.ini` on the sandbox",
        secret=True,
    )
    events_max_streams: int = setting(
        _whole_number(1),
        "8",
        meaning="event streams the gateway serves itself at once, per process (each holds a waitress thread); the "
        "next is `503 eventsfull`; unused with `NCHAN_PUBLISH_URL`",
    )
    events_heartbeat_s: int = setting(
        _whole_number(1), "15", meaning="seconds between two comment lines on an idle event stream the gateway serves"
    )
    events_buffer_s: int = setting(
        _whole_number(1),
        "300",
        meaning="how long an event is kept for a stream that resumes with `Last-Event-ID` (at most "
        "1,000 events a channel)",
    )
    nchan_publish_url: str | None = setting(
        _base_url,
        meaning="nginx's nchan publisher location (`http://127.0.0.1:8090/lms_api/publish`, internal only): nginx "
        "holds the event streams, EventSource and WebSocket, and the gateway publishes there",
        note="the gateway serves event streams itself, EventSource only",
    )
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = setting(
        _networks,
        "",
        meaning="addresses or networks (`10.0.0.0/8, ::1`) whose `X-Forwarded-For`, `X-Forwarded-Proto` and "
        "`X-Forwarded-Host` are believed",
    )
    public_url: str | None = setting(
        _public_url,
        meaning="the gateway's origin as callers reach it (`https://api.example.edu`), for `Location`; "
        "unset: what a trusted proxy forwarded, else a path",
    )
    cors_allowed_origins: tuple[str, ...] = setting(
        _origins,
        "",
        meaning="exact origins of the SPA, e.g. `https://app.example.edu, http://localhost:5173`",
        note="no cross-origin access",
    )
    log_format: str = setting(_log_format, "json", meaning="`json` or `console`", note="`console` in `development.ini`")
    cache_ttls: Mapping[str, int] = setting(
        _cache_ttls,
        DEFAULT_CACHE_TTLS,
        meaning="seconds each group of read answers is kept (see When Moodle is slow or down); `0` turns a group "
        "off; groups left out keep their default",
    )
    cache_stale_s: int = setting(
        _whole_number(0),
        "600",
        meaning="how long past its expiry an entry may still be served when Moodle cannot be reached",
    )
    cache_max_mb: int = setting(
        _whole_number(1),
        "64",
        meaning="memory for the in-process cache: entries, and an eighth for the site info kept parsed; least recently "
        "used out first (with `REDIS_URL`, entries only while Redis is away)",
    )
    moodle_max_concurrency: int = setting(_whole_number(1), "10", meaning="Moodle calls in flight at once, per process")
    moodle_queue_timeout_ms: int = setting(
        _whole_number(0),
        "250",
        meaning="how long a call waits for one of those slots before `503 moodlebusy` (never past its own deadline)",
    )
    moodle_breaker_failures: int = setting(
        _whole_number(1), "5", meaning="transport failures in a row that open the circuit breaker"
    )
    moodle_breaker_cooldown_s: int = setting(
        _whole_number(1), "10", meaning="how long an open breaker refuses calls before one trial call"
    )
    metrics_allowed_networks: tuple[IPv4Network | IPv6Network, ...] = setting(
        _networks,
        "127.0.0.0/8, ::1",
        meaning="the operators' networks: they may read `GET /metrics` and how `/readyz` says Moodle cannot be "
        "reached (the caller as rate limits see it, `TRUSTED_PROXIES` included); everyone else gets `404` from "
        "`/metrics` and only the cause from `/readyz`",
    )
    # A callable that starts the stand-in and answers an object with its ``url`` and ``token``.
    moodle_sandbox: str = setting(
        _dotted_name,
        "moodle_sandbox.server:start_sandbox",
        meaning="what starts a stand-in Moodle when `MOODLE_BASE_URL` is unset (development only: `production.ini` "
        "requires a Moodle): a dotted name of a callable answering an object with `url` and `token`",
    )
    uses_development_jwt_secret: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def uses_sandbox(self) -> bool:
        return self.moodle_base_url is None

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a traceback
        return (
            f"Settings(environment={self.environment!r}, moodle_base_url={self.moodle_base_url!r}, "
            f"moodle_timeout_ms={self.moodle_timeout_ms}, moodle_max_retries={self.moodle_max_retries})"
        )


# Each setting by its name as the environment spells it, in the order Settings declares them.
KEYS: Mapping[str, Key] = MappingProxyType(
    {each.name.upper(): each.metadata[_KEY] for each in fields(Settings) if _KEY in each.metadata}
)
SETTING_NAMES = tuple(KEYS)


def read_dotenv(directory: str | Path | None) -> dict[str, str]:
    """Read ``.env`` from ``directory`` (or the working directory) without touching ``os.environ``."""
    path = Path(directory or ".") / ".env"
    if not path.is_file():
        return {}
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def load_settings(
    ini: Mapping[str, Any],
    environ: Mapping[str, str],
    dotenv: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting; raise one :class:`SettingsError` naming every bad or missing key."""
    environment = str(ini.get("lms_api.environment", PRODUCTION)).strip().lower()
    if environment not in (DEVELOPMENT, PRODUCTION):
        raise SettingsError(f"lms_api.environment must be {DEVELOPMENT!r} or {PRODUCTION!r}, got {environment!r}")

    layers = (environ, dotenv or {}, {name.upper(): value for name, value in ini.items()})
    values: dict[str, Any] = {}
    secrets: list[str] = []
    problems: list[str] = []
    refused: set[str] = set()
    for name, key in KEYS.items():
        raw = next((layer[name] for layer in layers if layer.get(name) is not None), None)
        if raw is None or str(raw).strip() == "":
            raw = key.fallback
        try:
            values[name] = None if raw is None else key.parse(name, str(raw))
        except SettingsError as error:
            problems.extend(error.problems)
            refused.add(name)
            values[name] = None
        if key.secret and values[name]:
            secrets.append(values[name])

    problems.extend(_moodle_problems(environment, values, refused))
    if values["JOBS_ENGINE"] is None and "JOBS_ENGINE" not in refused:
        # Replicas sharing a Redis share their jobs too: a job one of them kept in its process, another would not know.
        values["JOBS_ENGINE"] = "rq" if values["REDIS_URL"] else "embedded"
    if values["JOBS_ENGINE"] == "rq" and not values["REDIS_URL"] and "REDIS_URL" not in refused:
        problems.append("JOBS_ENGINE=rq needs REDIS_URL: the queue and the jobs are kept in Redis")
    if (
        values["WEBHOOK_SECRET"] is None
        and "WEBHOOK_SECRET" not in refused
        and environment == DEVELOPMENT
        and not (values["MOODLE_BASE_URL"] or "MOODLE_BASE_URL" in refused)
    ):
        values["WEBHOOK_SECRET"] = DEVELOPMENT_WEBHOOK_SECRET  # the sandbox plays Moodle's Event Trigger with it
    jwt_secret, algorithms, uses_development_secret = None, tuple[str, ...](), False
    if not any(name.startswith("JWT_") for name in refused):  # else the keys' own problems say enough
        try:
            jwt_secret, algorithms, uses_development_secret = _jwt_keys(environment, values)
        except SettingsError as error:
            problems.extend(error.problems)
    if problems:
        raise SettingsError(*dict.fromkeys(problems))
    # Each setting's field takes its key's value; the JWT keys and the fields that are no setting are worked out above.
    return Settings(
        **{
            **{name.lower(): value for name, value in values.items()},
            "environment": environment,
            "jwt_secret": jwt_secret,
            "jwt_algorithms": algorithms,
            "uses_development_jwt_secret": uses_development_secret,
            "secrets": tuple(secrets),
        }
    )


def _moodle_problems(environment: str, values: Mapping[str, Any], refused: set[str]) -> list[str]:
    """What is wrong with the Moodle keys together; a key whose own value was refused is not named again."""
    base_url, token = values["MOODLE_BASE_URL"], values["MOODLE_TOKEN"]
    problems = []
    if environment == PRODUCTION:
        problems += [
            f"{name} is required with production.ini: set it in the environment or in .env"
            for name in ("MOODLE_BASE_URL", "MOODLE_TOKEN")
            if not values[name] and name not in refused
        ]
        parts = urlsplit(base_url or "")
        if parts.scheme == "http" and not _is_loopback(parts.hostname or "") and not values["MOODLE_ALLOW_INSECURE"]:
            problems.append(
                "MOODLE_BASE_URL must be https:// with production.ini (the token would cross the network in clear); "
                "set MOODLE_ALLOW_INSECURE=true to accept http://"
            )
    elif (base_url or "MOODLE_BASE_URL" in refused) and not token:
        problems.append("MOODLE_TOKEN is required when MOODLE_BASE_URL is set")
    roles, assignable = values["MOODLE_ROLE_IDS"], values["MOODLE_ASSIGNABLE_ROLES"]
    if roles is not None and assignable is not None:
        unknown = [name for name in assignable if name not in roles]
        if unknown:
            problems.append(
                f"MOODLE_ASSIGNABLE_ROLES names {', '.join(unknown)}, which MOODLE_ROLE_IDS does not know "
                f"(known: {', '.join(sorted(roles))})"
            )
    return problems


def _jwt_keys(environment: str, values: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], bool]:
    """The HMAC secret, the accepted algorithms, and whether the development secret stands in.

    Each algorithm needs its key: HS* the secret, RS*/PS*/ES* a public key or a JWKS URL. Unset algorithms
    follow the keys given: HS256 for a secret, the public key's own family, RS256 and ES256 for a JWKS.
    """
    secret, public_key, jwks_url = values["JWT_SECRET"], values["JWT_PUBLIC_KEY"], values["JWT_JWKS_URL"]
    if public_key and jwks_url:
        raise SettingsError("Set JWT_PUBLIC_KEY or JWT_JWKS_URL, not both")
    uses_development_secret = False
    if not (secret or public_key or jwks_url):
        if environment == PRODUCTION:
            raise SettingsError(
                "JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is required with production.ini: "
                "set it in the environment or in .env"
            )
        if values["MOODLE_BASE_URL"]:
            # The development secret is in the source: anyone could sign an admin token for that Moodle.
            raise SettingsError(
                "JWT_SECRET (or JWT_PUBLIC_KEY or JWT_JWKS_URL) is required when MOODLE_BASE_URL is set: "
                "the development secret is public and must never guard a real Moodle"
            )
        secret, uses_development_secret = DEVELOPMENT_JWT_SECRET, True
    algorithms = values["JWT_ALGORITHMS"]
    if algorithms is None:
        algorithms = ("HS256",) if secret else ()
        if public_key:
            algorithms += ("ES256",) if _key_family(public_key) == "EC" else ("RS256",)
        if jwks_url:
            algorithms += ("RS256", "ES256")
    for name in algorithms:
        if name in HMAC_ALGORITHMS and not secret:
            raise SettingsError(f"JWT_ALGORITHMS has {name}, which needs JWT_SECRET")
        if name not in HMAC_ALGORITHMS and not (public_key or jwks_url):
            raise SettingsError(f"JWT_ALGORITHMS has {name}, which needs JWT_PUBLIC_KEY or JWT_JWKS_URL")
    if public_key:
        family = _key_family(public_key)
        wrong = [name for name in algorithms if name not in HMAC_ALGORITHMS and name[:2] not in _PREFIXES[family]]
        if wrong:
            raise SettingsError(f"JWT_PUBLIC_KEY is an {family} key; it cannot verify {', '.join(wrong)}")
    hmac = [name for name in algorithms if name in HMAC_ALGORITHMS]
    if secret and hmac and not uses_development_secret:
        minimum = max(MIN_JWT_SECRET_LENGTH[name] for name in hmac)
        if len(secret.encode()) < minimum:
            raise SettingsError(f"JWT_SECRET must be at least {minimum} bytes long for {', '.join(hmac)}")
    return secret, algorithms, uses_development_secret


_PREFIXES = {"RSA": ("RS", "PS"), "EC": ("ES",)}


def _key_family(key: PublicKey) -> str:
    return "EC" if isinstance(key, EllipticCurvePublicKey) else "RSA"


def includeme(config: Configurator) -> None:
    config.add_request_method(lambda request: request.registry.settings["lms_api.settings"], "lms_settings", reify=True)
