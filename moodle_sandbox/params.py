"""A small copy of Moodle's external parameter descriptions and of ``external_api::validate_parameters()``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moodle_sandbox.errors import MoodleException
from moodle_sandbox.php import clean_safedir, clean_username, is_valid_plugin_name, php_trim, strip_tags

_INT = re.compile(r"0|-?[1-9][0-9]*")  # what survives PHP's (string)(int)$value === $value
_INT_RANGE = range(-(2**63), 2**63)
_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_CAPABILITY = re.compile(r"[a-z][a-z0-9_]*/[a-z][a-z0-9_]*:[a-z0-9_]+")
_TIMEZONE = re.compile(r"([+-]?(0?[0-9](\.[5|0])?|1[0-3](\.0)?|1[0-2]\.5))|(99)|[A-Za-z0-9]+(/?[A-Za-z_-])+")
REQUIRED, DEFAULT, OPTIONAL = "required", "default", "optional"
# What a stock Moodle 5.0 site has installed, for the PARAM_* types that keep only installed plugins.
INSTALLED_LANGS = ("en",)
INSTALLED_THEMES = ("boost", "classic")
INSTALLED_AUTHS = (
    "cas", "db", "email", "ldap", "lti", "manual", "mnet", "nologin", "none", "oauth2", "shibboleth", "webservice",
)  # fmt: skip


def _installed(choices: tuple[str, ...]) -> Callable[[str], str]:
    return lambda value: value if value in choices else ""


# clean_param() per PARAM_* type: validate_parameters() refuses a value that cleaning would change.
_CLEANERS: dict[str, Callable[[str], str]] = {
    "raw": lambda value: value,
    "text": strip_tags,
    "alpha": lambda value: re.sub(r"[^A-Za-z]", "", value),
    "alphanumext": clean_safedir,
    "safedir": clean_safedir,
    "plugin": lambda value: value if is_valid_plugin_name(value) else "",
    # Moodle keeps only capabilities it knows; the sandbox accepts any well-formed name.
    "capability": lambda value: value if _CAPABILITY.fullmatch(value) else "",
    "notags": strip_tags,
    "raw_trimmed": php_trim,
    "username": clean_username,
    "timezone": lambda value: value if _TIMEZONE.fullmatch(value) else "",
    "lang": _installed(INSTALLED_LANGS),
    "theme": _installed(INSTALLED_THEMES),
    "auth": _installed(INSTALLED_AUTHS),
}


@dataclass(frozen=True)
class Value:
    """``external_value``: ``type`` is int, float, bool or a string type (raw, text, alpha, alphanumext, safedir,
    plugin, capability, notags, raw_trimmed, username, timezone, lang, theme, auth), named like Moodle's PARAM_*
    values so errors show the same type names."""

    type: str
    presence: str = REQUIRED
    default: Any = None


@dataclass(frozen=True)
class Single:
    """``external_single_structure``."""

    keys: dict[str, Any]
    presence: str = REQUIRED
    default: Any = None


@dataclass(frozen=True)
class Multiple:
    """``external_multiple_structure``: list indexes sent by the client are ignored and renumbered."""

    item: Any
    presence: str = REQUIRED
    default: Any = field(default_factory=list)


def invalid_parameter(debuginfo: str) -> MoodleException:
    return MoodleException(
        "core\\exception\\invalid_parameter_exception",
        "invalidparameter",
        "Invalid parameter value detected",
        debuginfo,
    )


def validate(description: Any, value: Any) -> Any:
    if isinstance(description, Value):
        return _validate_value(description, value)
    if not isinstance(value, dict):
        raise invalid_parameter(f"Only arrays accepted. The bad value is: '{value}'")
    if isinstance(description, Multiple):
        return [validate(description.item, item) for item in value.values()]
    result: dict[str, Any] = {}
    for key, sub in description.keys.items():
        if key not in value:
            if sub.presence == REQUIRED:
                raise invalid_parameter(f"Missing required key in single structure: {key}")
            if sub.presence == DEFAULT:
                result[key] = sub.default
            continue
        try:
            result[key] = validate(sub, value[key])
        except MoodleException as error:
            raise invalid_parameter(
                f"{key} => Invalid parameter value detected ({error.debuginfo}): {error.debuginfo}"
            ) from None
    unexpected = [key for key in value if key not in description.keys]
    if unexpected:  # Moodle reports these only once every declared key has passed
        raise invalid_parameter(f"Unexpected keys ({', '.join(unexpected)}) detected in parameter array.")
    return result


def _validate_value(description: Value, value: Any) -> Any:
    if isinstance(value, dict):
        raise invalid_parameter("Scalar type expected, array or object received.")
    wrong_type = invalid_parameter(
        f'Invalid external api parameter: the value is "{value}", the server was expecting "{description.type}" type'
    )
    if description.type == "int":
        if not _INT.fullmatch(value) or int(value) not in _INT_RANGE:
            raise wrong_type
        return int(value)
    if description.type == "float":
        if not _FLOAT.fullmatch(value):
            raise wrong_type
        return float(value)
    if description.type == "bool":
        if value not in ("0", "1"):
            raise wrong_type
        return value == "1"
    if _CLEANERS[description.type](value) != value:
        raise wrong_type
    return value
