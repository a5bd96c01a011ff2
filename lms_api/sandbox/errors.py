"""Moodle's exceptions as the sandbox raises and renders them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class MoodleException(Exception):
    """Rendered like Moodle's REST server: ``{"exception", "errorcode", "message"}``, ``debuginfo`` in debug mode."""

    exception: str
    errorcode: str
    message: str
    debuginfo: str | None = None

    def body(self, debug: bool) -> dict[str, Any]:
        if not debug or not self.debuginfo:
            return {"exception": self.exception, "errorcode": self.errorcode, "message": self.message}
        return {
            "exception": self.exception,
            "errorcode": self.errorcode,
            "message": f"{self.message} ({self.debuginfo})",
            "debuginfo": self.debuginfo,
        }


def invalid_token() -> MoodleException:
    return MoodleException("core\\exception\\moodle_exception", "invalidtoken", "Invalid token - token not found")


def unknown_function(name: str, debug: bool) -> MoodleException:
    if debug:  # debug mode names the table and the query, as a real Moodle does
        query = f"SELECT * FROM {{external_functions}} WHERE name = ?\n[array (\n  0 => '{name}',\n)]"
        return MoodleException(
            "dml_missing_record_exception",
            "invalidrecord",
            "Can't find data record in database table external_functions.",
            query,
        )
    return MoodleException(
        "dml_missing_record_exception", "invalidrecordunknown", "Can't find data record in database."
    )


def not_in_service(name: str) -> MoodleException:
    return MoodleException(
        "webservice_access_exception",
        "accessexception",
        "Access control exception",
        f"Access to the function {name}() is not allowed.",
    )


def site_maintenance() -> MoodleException:
    return MoodleException(
        "core\\exception\\moodle_exception",
        "sitemaintenance",
        "The site is undergoing maintenance and is currently not available",
    )
