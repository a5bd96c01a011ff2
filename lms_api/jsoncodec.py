"""JSON for Moodle's answers and the gateway's envelopes: orjson, and the standard library for what orjson refuses.

Every forwarded answer is parsed once and written once on the request's path, and Moodle's answers are large (a site
info lists every function of the token's service): orjson does both in a fraction of the standard library's time, as
README's benchmark section shows. What orjson refuses to read but the standard library reads is still read as before:
a byte order mark in front of Moodle's answer (a plugin file saved with one), a lone surrogate escape. What it refuses
to write is written by the standard library: a key that is not a string, an integer past 64 bits. orjson reads an
integer past 64 bits as a float; PHP has no such integers, so Moodle sends none.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; ``ValueError`` when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII as it is."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
