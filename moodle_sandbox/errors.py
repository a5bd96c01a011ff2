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

    def text(self, debug: bool) -> str:
        """What ``getMessage()`` gives, e.g. in a warning: in debug mode Moodle appends the debuginfo."""
        return f"{self.message} ({self.debuginfo})" if debug and self.debuginfo else self.message

    def body(self, debug: bool) -> dict[str, Any]:
        if not debug or not self.debuginfo:
            return {"exception": self.exception, "errorcode": self.errorcode, "message": self.message}
        return {
            "exception": self.exception,
            "errorcode": self.errorcode,
            "message": self.text(debug),
            "debuginfo": self.debuginfo,
        }


class PhpError(MoodleException):
    """A PHP ``Error`` (``TypeError``, plain ``Error``...) reaching the REST server: Moodle renders its class and
    message only, without an errorcode, and it has no debuginfo even in debug mode."""

    def __init__(self, exception: str, message: str) -> None:
        super().__init__(exception, "", message)

    def body(self, debug: bool) -> dict[str, Any]:
        return {"exception": self.exception, "message": self.message}


def moodle_exception(errorcode: str, message: str, debuginfo: str | None = None) -> MoodleException:
    return MoodleException("core\\exception\\moodle_exception", errorcode, message, debuginfo)


def coding_exception(hint: str, debuginfo: str | None = None) -> MoodleException:
    message = f"Coding error detected, it must be fixed by a programmer: {hint}"
    return MoodleException("core\\exception\\coding_exception", "codingerror", message, debuginfo)


def var_export(params: list[int | str]) -> str:
    """PHP's ``var_export()`` of a query's parameter list, as Moodle puts it in a DML error's debuginfo."""
    lines = []
    for index, value in enumerate(params):
        shown = str(value) if isinstance(value, int) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        lines.append(f"  {index} => {shown},\n")
    return "array (\n" + "".join(lines) + ")"


# The messages of dml_missing_record_exception per table, in debug mode; production hides the table.
_MISSING_RECORD_CODES = {
    "user": ("invaliduser", "Invalid user"),
    "course_modules": ("invalidcoursemodule", "Invalid course module ID"),
}


def missing_record(
    table: str, fields: str, record_id: int | str, debug: bool, **conditions: int | str
) -> MoodleException:
    """``get_record($table, ['id' => $record_id, ...$conditions], $fields, MUST_EXIST)`` finding nothing.

    Production mode hides the table (``invalidrecordunknown``); debug mode names it, and a few tables have their own
    errorcode, as in Moodle's ``dml_missing_record_exception``.
    """
    where = " AND ".join(f"{name} = ?" for name in ("id", *conditions))
    debuginfo = f"SELECT {fields} FROM {{{table}}} WHERE {where}\n[{var_export([record_id, *conditions.values()])}]"
    if not debug:
        message = "Can't find data record in database."
        return MoodleException("dml_missing_record_exception", "invalidrecordunknown", message, debuginfo)
    default = ("invalidrecord", f"Can't find data record in database table {table}.")
    errorcode, message = _MISSING_RECORD_CODES.get(table, default)
    return MoodleException("dml_missing_record_exception", errorcode, message, debuginfo)


BIGINT_MAX = 2**63 - 1


def bigint_read_error(sql: str, params: list[int | str], bad: str) -> MoodleException:
    """PostgreSQL refusing a non-integer compared with a bigint column (the plugin passes text straight to SQL)."""
    return _read_error(f'invalid input syntax for type bigint: "{bad}"', sql, params)


def bigint_range_read_error(sql: str, params: list[int | str], bad: str) -> MoodleException:
    """PostgreSQL refusing a number too big for a bigint column."""
    return _read_error(f'value "{bad}" is out of range for type bigint', sql, params)


def _read_error(problem: str, sql: str, params: list[int | str]) -> MoodleException:
    debuginfo = f"ERROR:  {problem}\n{sql}\n[{var_export(params)}]"
    return MoodleException("dml_read_exception", "dmlreadexception", "Error reading from database", debuginfo)


def ids_read_error(select: str, ids: list[str]) -> MoodleException | None:
    """``$DB->get_in_or_equal($ids)`` appended to ``select``, when PostgreSQL cannot read one of the ids (the pieces
    of a PARAM_SEQUENCE) as a bigint: an empty one (``2,,3``) or one past the range. None when every id reads."""
    condition = "= ?" if len(ids) == 1 else f"IN ({','.join('?' * len(ids))})"
    sql = f"{select} {condition}"
    for piece in ids:
        if piece == "":
            return bigint_read_error(sql, list(ids), "")
        if int(piece) > BIGINT_MAX:
            return bigint_range_read_error(sql, list(ids), piece)
    return None


def course_ids_read_error(ids: list[str]) -> MoodleException | None:
    """``get_courses_by_field('ids')``: the ids are read first by the query that preloads their categories."""
    select = "SELECT DISTINCT cc.id FROM {course} c JOIN {course_categories} cc ON cc.id = c.category WHERE c.id"
    return ids_read_error(select, ids)


def bigint_write_error(table: str, bad: str) -> MoodleException:
    """PostgreSQL refusing a non-integer written to a bigint column; the INSERT is left out of the debuginfo."""
    debuginfo = f'ERROR:  invalid input syntax for type bigint: "{bad}"\nINSERT INTO {{{table}}} ...'
    return MoodleException("dml_write_exception", "dmlwriteexception", "Error writing to database", debuginfo)


def invalid_token() -> MoodleException:
    return MoodleException("core\\exception\\moodle_exception", "invalidtoken", "Invalid token - token not found")


def unknown_function(name: str, debug: bool) -> MoodleException:
    if debug:  # debug mode names the table and the query, as a real Moodle does
        query = f"SELECT * FROM {{external_functions}} WHERE name = ?\n[{var_export([name])}]"
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


def uploads_disabled() -> MoodleException:
    return MoodleException(
        "webservice_access_exception",
        "accessexception",
        "Access control exception",
        "Web service file upload must be enabled in external service settings",
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
