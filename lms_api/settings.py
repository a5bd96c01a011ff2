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
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from dotenv import dotenv_values
from pyramid.config import Configurator

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


@dataclass(frozen=True)
class Settings:
    environment: str
    moodle_base_url: str | None
    moodle_token: str | None
    moodle_timeout_ms: int
    moodle_debug: bool
    moodle_max_retries: int
    moodle_functions_ttl_s: int
    moodle_max_input_vars: int
    moodle_max_upload_mb: int
    moodle_attach_function: str
    moodle_role_ids: Mapping[str, int]
    moodle_assignable_roles: tuple[str, ...]
    moodle_course_formats: tuple[str, ...]
    moodle_max_answer_mb: int
    moodle_sandbox: str
    jwt_secret: str | None
    jwt_public_key: PublicKey | None
    jwt_jwks_url: str | None
    jwt_algorithms: tuple[str, ...]
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_leeway_s: int
    log_format: str
    rate_limit_read: Rate
    rate_limit_write: Rate
    rate_limit_unauthenticated: Rate
    redis_url: str | None
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
    cors_allowed_origins: tuple[str, ...]
    cache_ttls: Mapping[str, int]
    cache_stale_s: int
    cache_max_mb: int
    moodle_max_concurrency: int
    moodle_queue_timeout_ms: int
    moodle_breaker_failures: int
    moodle_breaker_cooldown_s: int
    metrics_allowed_networks: tuple[IPv4Network | IPv6Network, ...]
    max_json_body_kb: int
    public_url: str | None
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
DEFAULT_ATTACH_FUNCTION = "local_course_add_new_course_module_resource"
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
CACHE_GROUPS = ("siteinfo", "courses", "users", "notifications")
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


def _log_format(key: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("json", "console"):
        raise SettingsError(f"{key} must be 'json' or 'console', got {raw!r}")
    return value


@dataclass(frozen=True)
class _Key:
    name: str
    parse: Callable[[str, str], Any]
    default: str | None = None
    secret: bool = False


_KEYS = (
    _Key("MOODLE_BASE_URL", _base_url),
    _Key("MOODLE_TOKEN", _text, secret=True),
    _Key("MOODLE_TIMEOUT_MS", _whole_number(1), "15000"),
    _Key("MOODLE_DEBUG", _boolean, "false"),
    _Key("MOODLE_MAX_RETRIES", _whole_number(0), "2"),
    _Key("MOODLE_FUNCTIONS_TTL_S", _whole_number(1), "300"),
    # PHP's max_input_vars on the Moodle server (Moodle requires at least 5000); the room for one enrolment is 9.
    _Key("MOODLE_MAX_INPUT_VARS", _whole_number(9), "5000"),
    _Key("MOODLE_MAX_UPLOAD_MB", _whole_number(1), "50"),
    _Key("MOODLE_ATTACH_FUNCTION", _function_name, DEFAULT_ATTACH_FUNCTION),
    _Key("MOODLE_ROLE_IDS", _role_ids, ""),
    _Key("MOODLE_ASSIGNABLE_ROLES", _names(ROLE_NAME, "role names"), DEFAULT_ASSIGNABLE_ROLES),
    _Key("MOODLE_COURSE_FORMATS", _names(_PLUGIN_NAME, "course format plugin names"), DEFAULT_COURSE_FORMATS),
    _Key("MOODLE_MAX_ANSWER_MB", _whole_number(1), "32"),
    _Key("MOODLE_ALLOW_INSECURE", _boolean, "false"),
    # What stands in for Moodle when MOODLE_BASE_URL is unset (development only): a callable that starts it and
    # answers an object with its ``url`` and ``token``.
    _Key("MOODLE_SANDBOX", _dotted_name, "moodle_sandbox.server:start_sandbox"),
    _Key("JWT_SECRET", _text, secret=True),
    _Key("JWT_PUBLIC_KEY", _public_key),
    _Key("JWT_JWKS_URL", _https_url),
    _Key("JWT_ALGORITHMS", _algorithms),
    _Key("JWT_AUDIENCE", _text),
    _Key("JWT_ISSUER", _text),
    _Key("JWT_LEEWAY_S", _whole_number(0), str(DEFAULT_JWT_LEEWAY_S)),
    _Key("LOG_FORMAT", _log_format, "json"),
    _Key("RATE_LIMIT_READ", _rate, "600/minute"),
    _Key("RATE_LIMIT_WRITE", _rate, "120/minute"),
    _Key("RATE_LIMIT_UNAUTHENTICATED", _rate, "300/minute"),
    _Key("REDIS_URL", _redis_url, secret=True),  # may carry a password
    _Key("TRUSTED_PROXIES", _networks, ""),
    _Key("CORS_ALLOWED_ORIGINS", _origins, ""),
    _Key("CACHE_TTLS", _cache_ttls, DEFAULT_CACHE_TTLS),
    _Key("CACHE_STALE_S", _whole_number(0), "600"),
    _Key("CACHE_MAX_MB", _whole_number(1), "64"),
    _Key("MOODLE_MAX_CONCURRENCY", _whole_number(1), "10"),
    _Key("MOODLE_QUEUE_TIMEOUT_MS", _whole_number(0), "250"),
    _Key("MOODLE_BREAKER_FAILURES", _whole_number(1), "5"),
    _Key("MOODLE_BREAKER_COOLDOWN_S", _whole_number(1), "10"),
    _Key("METRICS_ALLOWED_NETWORKS", _networks, "127.0.0.0/8, ::1"),
    _Key("MAX_JSON_BODY_KB", _whole_number(1), "1024"),
    _Key("PUBLIC_URL", _public_url),
)

SETTING_NAMES = tuple(key.name for key in _KEYS)


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
    for key in _KEYS:
        raw = next((layer[key.name] for layer in layers if layer.get(key.name) is not None), None)
        if raw is None or str(raw).strip() == "":
            raw = key.default
        try:
            values[key.name] = None if raw is None else key.parse(key.name, str(raw))
        except SettingsError as error:
            problems.extend(error.problems)
            refused.add(key.name)
            values[key.name] = None
        if key.secret and values[key.name]:
            secrets.append(values[key.name])

    problems.extend(_moodle_problems(environment, values, refused))
    jwt_secret, algorithms, uses_development_secret = None, tuple[str, ...](), False
    if not any(name.startswith("JWT_") for name in refused):  # else the keys' own problems say enough
        try:
            jwt_secret, algorithms, uses_development_secret = _jwt_keys(environment, values)
        except SettingsError as error:
            problems.extend(error.problems)
    if problems:
        raise SettingsError(*dict.fromkeys(problems))
    # Each Settings field takes the value of the key of the same name; the rest are worked out above.
    field_names = {each.name for each in fields(Settings)}
    return Settings(
        **{
            **{name.lower(): value for name, value in values.items() if name.lower() in field_names},
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
