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


# Moodle's own text, as debug mode shows it.
_NOT_IN_SERVICE_DEBUGINFO = (
    "Access to the function {name}() is not allowed.\n"
    "                     There could be multiple reasons for this:\n"
    "                     1. The service linked to the user token does not contain the function.\n"
    "                     2. The service is user-restricted and the user is not listed.\n"
    "                     3. The service is IP-restricted and the user IP is not listed.\n"
    "                     4. The service is time-restricted and the time has expired.\n"
    "                     5. The token is time-restricted and the time has expired.\n"
    "                     6. The service requires a specific capability which the user does not have.\n"
    "                     7. The function is called with username/password (no user token is sent)\n"
    "                     and none of the services has the function to allow the user.\n"
    "                     These settings can be found in Administration > Site administration\n"
    "                     > Server > Web services > External services and Manage tokens."
)


def not_in_service(name: str) -> MoodleException:
    return MoodleException(
        "webservice_access_exception",
        "accessexception",
        "Access control exception",
        _NOT_IN_SERVICE_DEBUGINFO.format(name=name),
    )


def site_maintenance() -> MoodleException:
    return MoodleException(
        "core\\exception\\moodle_exception",
        "sitemaintenance",
        "The site is undergoing maintenance and is currently not available",
    )
