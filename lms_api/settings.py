"""Typed settings resolved from the environment, a ``.env`` file and the ini file.

Precedence, highest first: the process environment, ``.env``, the ini's ``[app:main]`` section, the default.
Environment keys are UPPER_SNAKE (``MOODLE_TOKEN``); the ini spells the same key in lower case
(``moodle_token``). Every value is checked once at start-up and a bad one stops the gateway with one
:class:`SettingsError` naming the key; secret values are never repeated in that message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

DEVELOPMENT = "development"
PRODUCTION = "production"

# Used only under development.ini when JWT_SECRET is unset, so `lms-api token` and the gateway agree
# without any set-up. Production refuses to start without a real key.
DEVELOPMENT_JWT_SECRET = "lms-api-development-only-secret-never-use-in-production-0123456789"

# RFC 7518 3.2: an HMAC key at least as long as the hash output.
MIN_JWT_SECRET_LENGTH = {"HS256": 32, "HS384": 48, "HS512": 64}
SUPPORTED_JWT_ALGORITHMS = tuple(MIN_JWT_SECRET_LENGTH)


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the key."""


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
    jwt_secret: str
    jwt_algorithms: tuple[str, ...]
    jwt_audience: str | None
    jwt_issuer: str | None
    log_format: str
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
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{key} must be an http:// or https:// URL such as https://moodle.example.edu")
    if parts.query or parts.fragment:
        raise SettingsError(f"{key} must not carry a query string or fragment")
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
_ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
_FUNCTION_NAME = re.compile(r"[a-z][a-z0-9_]{2,165}")


def _role_ids(key: str, raw: str) -> Mapping[str, int]:
    roles = dict(DEFAULT_ROLE_IDS)
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, separator, number = (piece.strip() for piece in entry.partition("="))
        if not separator or not _ROLE_NAME.fullmatch(name) or not number.isdigit() or int(number) < 1:
            raise SettingsError(f"{key} must look like 'student=5,teacher=4', got {entry!r}")
        roles[name] = int(number)
    return MappingProxyType(roles)


def _function_name(key: str, raw: str) -> str:
    name = raw.strip()
    if not _FUNCTION_NAME.fullmatch(name):
        raise SettingsError(f"{key} must be a Moodle web-service function name, got {raw!r}")
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
    _Key("JWT_SECRET", _text, secret=True),
    _Key("JWT_ALGORITHMS", _algorithms, "HS256"),
    _Key("JWT_AUDIENCE", _text),
    _Key("JWT_ISSUER", _text),
    _Key("LOG_FORMAT", _log_format, "json"),
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
    """Resolve every setting; raise :class:`SettingsError` naming the first bad key."""
    environment = str(ini.get("lms_api.environment", PRODUCTION)).strip().lower()
    if environment not in (DEVELOPMENT, PRODUCTION):
        raise SettingsError(f"lms_api.environment must be {DEVELOPMENT!r} or {PRODUCTION!r}, got {environment!r}")

    layers = (environ, dotenv or {}, {name.upper(): value for name, value in ini.items()})
    values: dict[str, Any] = {}
    secrets: list[str] = []
    for key in _KEYS:
        raw = next((layer[key.name] for layer in layers if layer.get(key.name) not in (None, "")), key.default)
        values[key.name] = None if raw is None else key.parse(key.name, str(raw))
        if key.secret and values[key.name]:
            secrets.append(values[key.name])

    base_url, token, jwt_secret = values["MOODLE_BASE_URL"], values["MOODLE_TOKEN"], values["JWT_SECRET"]
    if environment == PRODUCTION:
        for name in ("MOODLE_BASE_URL", "MOODLE_TOKEN", "JWT_SECRET"):
            if not values[name]:
                raise SettingsError(f"{name} is required with production.ini: set it in the environment or in .env")
    if base_url and not token:
        raise SettingsError("MOODLE_TOKEN is required when MOODLE_BASE_URL is set")

    uses_development_secret = False
    if not jwt_secret:
        jwt_secret, uses_development_secret = DEVELOPMENT_JWT_SECRET, True
    else:
        algorithms = values["JWT_ALGORITHMS"]
        minimum = max(MIN_JWT_SECRET_LENGTH[name] for name in algorithms)
        if len(jwt_secret.encode()) < minimum:
            raise SettingsError(f"JWT_SECRET must be at least {minimum} bytes long for {', '.join(algorithms)}")

    return Settings(
        environment=environment,
        moodle_base_url=base_url,
        moodle_token=token,
        moodle_timeout_ms=values["MOODLE_TIMEOUT_MS"],
        moodle_debug=values["MOODLE_DEBUG"],
        moodle_max_retries=values["MOODLE_MAX_RETRIES"],
        moodle_functions_ttl_s=values["MOODLE_FUNCTIONS_TTL_S"],
        moodle_max_input_vars=values["MOODLE_MAX_INPUT_VARS"],
        moodle_max_upload_mb=values["MOODLE_MAX_UPLOAD_MB"],
        moodle_attach_function=values["MOODLE_ATTACH_FUNCTION"],
        moodle_role_ids=values["MOODLE_ROLE_IDS"],
        jwt_secret=jwt_secret,
        jwt_algorithms=values["JWT_ALGORITHMS"],
        jwt_audience=values["JWT_AUDIENCE"],
        jwt_issuer=values["JWT_ISSUER"],
        log_format=values["LOG_FORMAT"],
        uses_development_jwt_secret=uses_development_secret,
        secrets=tuple(secrets),
    )
