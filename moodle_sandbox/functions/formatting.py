"""How Moodle's external functions format stored text for answers, with the default (not raw) settings."""

from __future__ import annotations

import html
import re

from moodle_sandbox.errors import moodle_exception
from moodle_sandbox.php import strip_tags

FORMAT_MOODLE, FORMAT_HTML, FORMAT_PLAIN, FORMAT_MARKDOWN = 0, 1, 2, 4
TEXT_FORMATS = (FORMAT_MOODLE, FORMAT_HTML, FORMAT_PLAIN, FORMAT_MARKDOWN)
_LONE_AMPERSAND = re.compile(r"&(?![a-zA-Z0-9#]{1,8};)")
_ESCAPED_NUMERIC_ENTITY = re.compile(r"&amp;#(\d+|x[0-9a-f]+);", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\n\r|\n|\r")  # what PHP's nl2br() breaks at


def format_string(text: str) -> str:
    """``util::format_string()``: tags stripped (``formatstringstriptags``), ``<``, ``>`` and lone ``&`` escaped."""
    text = strip_tags(text).replace("<", "&lt;").replace(">", "&gt;")
    return _LONE_AMPERSAND.sub("&amp;", text)


def format_text(text: str, text_format: int) -> tuple[str, int]:
    """``util::format_text()``: empty text keeps its format, anything else is answered as HTML (format 1).

    The text itself is returned as stored: Moodle's HTML cleaning and filters are not reproduced.
    """
    return ("", text_format) if text == "" else (text, 1)


def validate_format(text_format: int) -> None:
    """``util::validate_format()``; its string is missing from Moodle's language pack, hence the brackets."""
    if text_format not in TEXT_FORMATS:
        debuginfo = f"The format with value={text_format} is not supported by this Moodle site"
        raise moodle_exception("formatnotsupported", "[[formatnotsupported]]", debuginfo)


def format_plain_text(text: str) -> str:
    """``format_text($text, FORMAT_PLAIN)``: special characters escaped as ``s()`` does (numeric entities kept),
    double spaces made ``&nbsp; ``, ``<br />`` before each line break. Filters are not reproduced."""
    escaped = html.escape(text, quote=True).replace("&#x27;", "&#039;")
    escaped = _ESCAPED_NUMERIC_ENTITY.sub(r"&#\1;", escaped)
    return _LINE_BREAK.sub(r"<br />\g<0>", escaped.replace("  ", "&nbsp; "))
