"""PHP bracket form encoding, the only request body Moodle's REST server reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def encode_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten nested params into ``(name, value)`` pairs the way PHP parses ``$_POST``.

    Lists become ``a[0]``, mappings ``a[key]``, nested to any depth; booleans become ``1``/``0`` (Moodle
    rejects ``true``); ``None`` is left out. An empty list or mapping produces no pair at all: form
    encoding cannot express it, so route schemas reject an empty list where Moodle requires one.
    """
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        _encode(str(name), value, pairs)
    return pairs


def _encode(name: str, value: Any, pairs: list[tuple[str, str]]) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        pairs.append((name, "1" if value else "0"))
    elif isinstance(value, (str, int, float)):
        pairs.append((name, str(value)))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _encode(f"{name}[{key}]", item, pairs)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _encode(f"{name}[{index}]", item, pairs)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} for Moodle parameter {name!r}")


# wstoken, wsfunction and moodlewsrestformat take three of the server's max_input_vars.
RESERVED_INPUT_VARS = 3


def split_by_input_vars(
    name: str, items: Sequence[Any], other_params: Mapping[str, Any], max_input_vars: int
) -> list[range]:
    """Split ``items`` (the list param ``name``) into consecutive runs whose call fits ``max_input_vars``.

    PHP silently drops every form variable past ``max_input_vars``, so a call that does not fit is not
    refused: Moodle acts on the part it kept and answers success. Each run is sent as its own call.
    Every item fits a call alone: MOODLE_MAX_INPUT_VARS is at least 9, the three reserved fields and an enrolment's
    six (the largest item a route sends; an id or a lookup value is one field, beside one other parameter at most).
    """
    budget = max_input_vars - RESERVED_INPUT_VARS - len(encode_params(other_params))
    runs: list[range] = []
    start, used = 0, 0
    for index, item in enumerate(items):
        fields = len(encode_params({name: [item]}))
        if used + fields > budget:
            runs.append(range(start, index))
            start, used = index, 0
        used += fields
    if start < len(items):
        runs.append(range(start, len(items)))
    return runs
