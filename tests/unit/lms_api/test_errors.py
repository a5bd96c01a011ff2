"""The one table of error codes: statuses, the status of Moodle's codes, and README's catalogue printed from it."""

import pytest

from lms_api.errors import ApiError, ErrorCode, status_of
from scripts.error_catalogue import README, readme_with_catalogue


def test_readme_error_catalogue_is_printed_from_the_table():
    readme = README.read_text()

    assert readme_with_catalogue(readme) == readme, "run: .venv/bin/python scripts/error_catalogue.py --write"


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
