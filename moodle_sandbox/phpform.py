"""Parse a form body into nested arrays the way PHP fills ``$_POST``, ``max_input_vars`` included."""

from __future__ import annotations

import re
from typing import Any

# PHP turns a key into an integer only when it is written the canonical way: "01" and "²" stay strings.
_INTEGER_KEY = re.compile(r"0|-?[1-9][0-9]*")
MAX_NESTING = 64


class PhpArray(dict[str, Any]):
    """A PHP array: string keys in insertion order; ``[]`` appends the next integer key."""

    def append(self, value: Any) -> None:
        numeric = [int(key) for key in self if _INTEGER_KEY.fullmatch(key)]
        self[str(max(numeric) + 1 if numeric else 0)] = value


def parse_php_form(pairs: list[tuple[str, str]], max_input_vars: int) -> tuple[PhpArray, int]:
    """Return the parsed variables and how many were dropped past ``max_input_vars`` (PHP drops them silently)."""
    result = PhpArray()
    kept = pairs[:max_input_vars]
    for name, value in kept:
        _assign(result, name, value)
    return result, len(pairs) - len(kept)


def _assign(target: PhpArray, name: str, value: str) -> None:
    base, segments = _split_name(name.lstrip(" "))
    if not base or len(segments) > MAX_NESTING:
        return
    keys = [base, *segments]
    node = target
    for index, key in enumerate(keys):
        last = index == len(keys) - 1
        if last:
            if key == "":
                node.append(value)
            else:
                node[key] = value
            return
        child = node.get(key) if key != "" else None
        if not isinstance(child, PhpArray):
            child = PhpArray()
            if key == "":
                node.append(child)
            else:
                node[key] = child
        node = child


def _split_name(name: str) -> tuple[str, list[str]]:
    """``a.b[x][]`` → (``a_b``, [``x``, ``""``]), as php_register_variable_ex() reads a name."""
    bracket = name.find("[")
    if bracket == 0:
        return "", []
    if bracket < 0 or name.find("]", bracket) < 0:
        # No (closed) bracket: a plain name, where PHP also turns the first "[" into "_".
        return name.replace("[", "_", 1).replace(".", "_").replace(" ", "_"), []
    segments = []
    position = bracket
    while position < len(name) and name[position] == "[":
        end = name.find("]", position)
        if end < 0:
            break
        segments.append(name[position + 1 : end])
        position = end + 1  # PHP ignores anything after the last closing bracket
    return name[:bracket].replace(".", "_").replace(" ", "_"), segments
