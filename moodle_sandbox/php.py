"""PHP and Moodle value rules the sandbox must follow to answer like a real Moodle: casts, cleaning, JSON."""

from __future__ import annotations

import json
import re
from typing import Any

# PHP 8 numeric strings: optional leading and trailing whitespace around a decimal or float literal.
_NUMERIC = re.compile(r"[ \t\n\r\v\f]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ \t\n\r\v\f]*")
_LEADING_NUMBER = re.compile(r"[ \t\n\r\v\f]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_PHP_TRIM = " \t\n\r\0\x0b"
_PLUGIN_NAME = re.compile(r"[a-z](?:[a-z0-9_](?!__))*[a-z0-9]+")
_FILE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f&<>\"`|':\\/]")


def php_json(value: Any) -> bytes:
    """``json_encode()`` with PHP's default flags: ``\\/`` for every slash and ``\\uXXXX`` beyond ASCII."""
    # A slash can only occur inside a JSON string, so escaping every one is what PHP does.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode()


def php_trim(text: str) -> str:
    return text.strip(_PHP_TRIM)


def php_empty(value: Any) -> bool:
    """PHP's ``empty()``, which Moodle uses on strings: ``""`` and ``"0"`` are both empty."""
    return value in (None, "", "0", 0, False) or value == [] or value == {}


def is_numeric(text: str) -> bool:
    return _NUMERIC.fullmatch(text) is not None


def php_intval(text: str) -> int:
    """``(int) $text``: the leading number, truncated towards zero; 0 when there is none."""
    match = _LEADING_NUMBER.match(text)
    if match is None:
        return 0
    number = float(match.group())
    if number != number or abs(number) >= 2**63:  # NaN cannot happen here; out of range saturates in PHP 8
        return -(2**63) if number < 0 else 2**63 - 1
    return int(number)


def php_loose_equals(left: str, right: str | int) -> bool:
    """PHP 8 ``$left == $right`` for a request string against a cleaned value."""
    if isinstance(right, int):
        return float(left) == right if is_numeric(left) else left == str(right)
    if is_numeric(left) and is_numeric(right):
        return float(left) == float(right)
    return left == right


def strip_tags(text: str) -> str:
    """PHP's ``strip_tags()``: a ``<`` not followed by whitespace opens a tag that runs to its ``>``."""
    result: list[str] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "<" and not (index + 1 < length and text[index + 1].isspace()):
            quote = ""
            index += 1
            while index < length:  # an unterminated tag swallows the rest, as in PHP
                inner = text[index]
                if quote:
                    quote = "" if inner == quote else quote
                elif inner in "\"'":
                    quote = inner
                elif inner == ">":
                    break
                index += 1
        else:
            result.append(char)
        index += 1
    return "".join(result)


def clean_alphanum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def clean_safedir(text: str) -> str:
    """PARAM_SAFEDIR (and PARAM_ALPHANUMEXT): only letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_\-]", "", text)


def clean_username(text: str) -> str:
    """PARAM_USERNAME without ``extendedusernamechars``: trimmed, lower case, only ``a-z0-9-._@``."""
    text = php_trim(text).lower().replace(" ", "")
    return re.sub(r"[^-.@_a-z0-9]", "", text)


def clean_file(text: str) -> str:
    """PARAM_FILE: no control characters, no ``&<>"`|':\\/``, and never ``.`` or ``..``."""
    text = _FILE_CHARS.sub("", text)
    return "" if text in (".", "..") else text


def clean_path(text: str) -> str:
    """PARAM_PATH: each ``/`` segment cleaned as PARAM_FILE, repeated slashes and ``./`` collapsed."""
    crumbs = text.replace("\\", "/").split("/")
    cleaned = [crumb if index == 0 and crumb == "." else clean_file(crumb) for index, crumb in enumerate(crumbs)]
    path = re.sub(r"//+", "/", "/".join(cleaned))
    return re.sub(r"/(\./)+", "/", path)


def is_valid_plugin_name(text: str) -> bool:
    return _PLUGIN_NAME.fullmatch(text) is not None
