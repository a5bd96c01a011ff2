"""Integers in JSON bodies, as JSON Schema counts them; integers in text, as ASCII digits only."""

import pytest
from marshmallow import ValidationError

from lms_api.schemas.base import MAX_SAFE_INTEGER, Flag, strict_int, text_int
from lms_api.schemas.enrolments import Role


@pytest.mark.parametrize(("sent", "loaded"), [(3, 3), (3.0, 3), (-0.0, 0), (float(MAX_SAFE_INTEGER), MAX_SAFE_INTEGER)])
def test_a_json_integer_is_taken_written_either_way(sent, loaded):
    result = strict_int(0).deserialize(sent)

    assert (result, type(result)) == (loaded, int)


@pytest.mark.parametrize("sent", [3.5, "3", True, False, float("inf"), float("nan"), 1e300, None, [3]])
def test_anything_else_is_refused_not_coerced(sent):
    with pytest.raises(ValidationError):
        strict_int(0).deserialize(sent)


def test_an_integral_float_is_held_to_the_bounds():
    with pytest.raises(ValidationError):
        strict_int(1).deserialize(0.0)


@pytest.mark.parametrize("sent", ["3.0", "1_0", " 3", "+3", "\uff10"])
def test_integers_in_text_are_ascii_digits_only(sent):
    with pytest.raises(ValidationError):
        text_int(0).deserialize(sent)


@pytest.mark.parametrize(("sent", "loaded"), [(1.0, True), (0.0, False), (1, True), (False, False)])
def test_a_flag_takes_1_0_as_1(sent, loaded):
    assert Flag().deserialize(sent) is loaded


@pytest.mark.parametrize("sent", [0.5, 2, 2.0, "1", None])
def test_a_flag_refuses_anything_else(sent):
    with pytest.raises(ValidationError):
        Flag().deserialize(sent)


@pytest.mark.parametrize(("sent", "loaded"), [(5.0, 5), (5, 5), ("student", "student"), ("Student", "Student")])
def test_a_role_id_may_be_written_5_0(sent, loaded):
    assert Role().deserialize(sent) == loaded


@pytest.mark.parametrize("sent", [5.5, 0.0, True, "", "x" * 101])
def test_a_role_refuses_what_is_neither_an_id_nor_a_name(sent):
    with pytest.raises(ValidationError):
        Role().deserialize(sent)
