"""The one table of error codes: statuses, the status of Moodle's codes, and README's catalogue printed from it."""

import random

import pytest

from lms_api.errors import (
    MOODLE_CODES,
    UNKNOWN_MOODLE_ERROR_STATUS,
    ApiError,
    ErrorCode,
    Origin,
    moodle_code,
    moodle_codes,
    status_of,
)
from lms_api.moodle.errors import error_from_moodle, is_moodle_code, status_for_errorcode
from scripts.readme_tables import ERROR_CATALOGUE, README


def test_readme_error_catalogue_is_printed_from_the_table():
    readme = README.read_text()

    assert ERROR_CATALOGUE.in_readme(readme) == readme, "run: .venv/bin/python scripts/readme_tables.py --write"


def test_every_code_is_an_error_status_with_a_meaning():
    for code in ErrorCode:
        assert 400 <= code.status < 600, code
        assert code.meaning and not code.meaning.endswith("."), code
        assert code.value == code.value.lower() and " " not in code.value


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.VALIDATION_ERROR, 400),
        ("invalidparameter", 400),
        ("shortnametaken", 409),
        ("invalidtoken", 502),
        ("dmlwriteexception", 502),
        ("", 502),
    ],
)
def test_a_code_carries_its_status_and_an_unknown_moodle_code_is_502(code, status):
    assert status_of(code) == status
    assert ApiError(code, "message").status == status


def test_an_explicit_status_wins_over_the_table():
    error = ApiError(ErrorCode.MOODLE_UNAVAILABLE, "reset after sending", status=504)

    assert (error.status, error.code) == (504, "moodleunavailable")
    assert str(error) == "504 moodleunavailable: reset after sending"


def test_moodle_codes_are_told_apart_from_the_gateways_own():
    assert ErrorCode.SHORTNAME_TAKEN.from_moodle
    assert ErrorCode.INVALID_MOODLE_TOKEN.from_moodle
    assert not ErrorCode.COURSE_NOT_FOUND.from_moodle


# -- Moodle's codes reach a caller only when they are of Moodle's code syntax --------------------------------------

HEX_TOKEN = "0123456789abcdef0123456789abcdef"  # a real Moodle token's shape, which Moodle's code syntax fits
POLICY = "<div>Passwords must be at least 8 characters long.</div><div>Passwords must have at least 1 digit(s).</div>"


@pytest.mark.parametrize(
    "errorcode",
    [HEX_TOKEN, f"bad_{HEX_TOKEN}_token", POLICY, "Invalid token", "invalidToken", "a" * 65, "é", 5, ["x"]],
    ids=["token", "holding-token", "html-policy", "words", "upper-case", "too-long", "accent", "integer", "list"],
)
def test_an_errorcode_that_is_no_moodle_code_is_a_moodleerror_without_moodles_text(errorcode):
    body = {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": errorcode,
        "message": f"{POLICY} {HEX_TOKEN}",
    }

    error = error_from_moodle(body, "core_user_create_users", (HEX_TOKEN,))

    assert (error.status, error.code) == (502, "moodleerror")
    assert error.message == (
        "Moodle answered core_user_create_users with an error whose code is not a Moodle code; its text is left out"
    )
    assert error.details == {"function": "core_user_create_users"}
    assert HEX_TOKEN not in repr(error.__dict__) and "<div>" not in repr(error.__dict__)


def test_upload_php_errors_follow_the_same_rule():
    body = {"error": f"Refused {HEX_TOKEN}", "errorcode": HEX_TOKEN, "stacktrace": None}

    error = error_from_moodle(body, "upload", (HEX_TOKEN,))

    assert (error.status, error.code) == (502, "moodleerror")
    assert HEX_TOKEN not in error.message


@pytest.mark.parametrize(
    ("errorcode", "status"),
    [("invalidparameter", 400), ("1", 502), ("0ab", 502), ("_", 502), ("x" * 64, 502), ("upload_error_partial", 400)],
)
def test_an_errorcode_of_moodles_code_syntax_is_passed_on_with_its_message(errorcode, status):
    body = {"exception": "moodle_exception", "errorcode": errorcode, "message": "Something went wrong"}

    error = error_from_moodle(body, "core_course_get_courses", (HEX_TOKEN,))

    assert (error.status, error.code, error.message) == (status, errorcode, "Something went wrong")


def test_a_body_without_errorcode_stays_a_php_failure_named_by_its_class():
    body = {"exception": "TypeError", "message": "bool given"}

    error = error_from_moodle(body, "enrol_manual_enrol_users", (HEX_TOKEN,))

    assert (error.status, error.code) == (502, "moodleexception")
    assert error.message == "Moodle failed internally in enrol_manual_enrol_users (PHP TypeError): bool given"


def test_the_moodle_code_check_refuses_a_code_its_cleaner_would_change():
    assert is_moodle_code("shortnametaken", lambda text: text)
    assert not is_moodle_code("shortnametaken", lambda text: text.replace("taken", "[redacted]"))
    assert not is_moodle_code(None, lambda text: text)


# -- a Moodle errorcode becomes its member by the row that names it, never by the row's place --------------------


def test_moodle_codes_are_picked_by_each_rows_origin_whatever_the_order_of_the_table():
    rows = list(ErrorCode)
    shuffled = random.Random(15).sample(rows, len(rows))

    assert moodle_codes(shuffled) == moodle_codes(reversed(rows)) == MOODLE_CODES
    assert set(MOODLE_CODES.values()) == {code for code in rows if code.origin is Origin.MOODLE}
    assert {code.from_moodle for code in rows} == {True, False}


@pytest.mark.parametrize("code", [code for code in ErrorCode if code.from_moodle], ids=str)
def test_each_known_moodle_errorcode_becomes_its_member(code):
    body = {"exception": "moodle_exception", "errorcode": code.value, "message": "Said so"}

    error = error_from_moodle(body, "core_course_get_courses", (HEX_TOKEN,))

    assert error.code is code
    assert error.status == code.status


@pytest.mark.parametrize("code", [code for code in ErrorCode if not code.from_moodle], ids=str)
def test_a_moodle_errorcode_spelled_like_a_gateway_code_is_not_taken_for_it(code):
    body = {"exception": "moodle_exception", "errorcode": code.value, "message": "Said so"}

    error = error_from_moodle(body, "core_course_get_courses", (HEX_TOKEN,))

    assert error.code == code.value and not isinstance(error.code, ErrorCode)
    assert error.status == UNKNOWN_MOODLE_ERROR_STATUS
    assert moodle_code(code.value) is None


def test_a_wsaccessuser_code_is_a_403_and_an_unknown_one_a_502():
    assert status_for_errorcode("wsaccessusernothere") == 403
    assert status_for_errorcode("dmlwriteexception") == 502
    assert status_for_errorcode("invalidtoken") == 502 and status_for_errorcode("nopermissions") == 403
