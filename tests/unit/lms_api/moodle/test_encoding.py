"""PHP bracket form encoding of Moodle web-service parameters."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from lms_api.moodle.encoding import RESERVED_INPUT_VARS, encode_params, split_by_input_vars
from lms_api.schemas.enrolments import EnrolmentSchema
from lms_api.settings import SettingsError
from tests.support.gateway import settings_for


def test_flat_scalars_become_strings():
    assert encode_params({"courseid": 7, "grade": 2.5, "name": "Python 101"}) == [
        ("courseid", "7"),
        ("grade", "2.5"),
        ("name", "Python 101"),
    ]


def test_nested_lists_and_dicts_use_brackets():
    params = {"courses": [{"fullname": "Python", "categoryid": 1}, {"fullname": "Go", "categoryid": 2}]}

    assert encode_params(params) == [
        ("courses[0][fullname]", "Python"),
        ("courses[0][categoryid]", "1"),
        ("courses[1][fullname]", "Go"),
        ("courses[1][categoryid]", "2"),
    ]


def test_deep_nesting_and_tuples():
    params = {"options": {"ids": (3, 4), "filter": {"field": [{"name": "id", "value": 9}]}}}

    assert encode_params(params) == [
        ("options[ids][0]", "3"),
        ("options[ids][1]", "4"),
        ("options[filter][field][0][name]", "id"),
        ("options[filter][field][0][value]", "9"),
    ]


def test_booleans_become_one_and_zero():
    assert encode_params({"visible": True, "hidden": False, "flags": [True, False]}) == [
        ("visible", "1"),
        ("hidden", "0"),
        ("flags[0]", "1"),
        ("flags[1]", "0"),
    ]


def test_none_is_omitted_at_any_depth():
    params = {"a": None, "b": 1, "c": {"d": None, "e": "x"}, "f": [None, 2]}

    assert encode_params(params) == [("b", "1"), ("c[e]", "x"), ("f[1]", "2")]


def test_empty_list_and_empty_dict_produce_no_pairs():
    assert encode_params({"ids": [], "options": {}, "keep": 0}) == [("keep", "0")]
    assert encode_params({}) == []


def test_zero_empty_string_and_negative_numbers_are_kept():
    assert encode_params({"zero": 0, "empty": "", "neg": -3, "small": 0.125}) == [
        ("zero", "0"),
        ("empty", ""),
        ("neg", "-3"),
        ("small", "0.125"),
    ]


def test_non_string_keys_are_stringified():
    assert encode_params({"values": {0: "a", 1: "b"}}) == [("values[0]", "a"), ("values[1]", "b")]


def test_order_is_preserved():
    params = {"z": 1, "a": 2, "m": {"y": 3, "b": 4}, "list": ["c", "a", "b"]}

    assert encode_params(params) == [
        ("z", "1"),
        ("a", "2"),
        ("m[y]", "3"),
        ("m[b]", "4"),
        ("list[0]", "c"),
        ("list[1]", "a"),
        ("list[2]", "b"),
    ]


@pytest.mark.parametrize(
    "value",
    [object(), b"bytes", {1, 2}, Decimal("1.5"), datetime.date(2025, 1, 1)],
    ids=["object", "bytes", "set", "decimal", "date"],
)
def test_unsupported_type_raises_type_error_naming_the_parameter(value):
    with pytest.raises(TypeError, match=r"for Moodle parameter 'courses\[0\]\[x\]'"):
        encode_params({"courses": [{"x": value}]})


def enrolment(user, **extra):
    return {"roleid": 5, "userid": user, "courseid": 2, **extra}


def test_a_batch_that_fits_is_one_run():
    items = [enrolment(user) for user in range(10)]

    assert split_by_input_vars("enrolments", items, {}, 5000) == [range(0, 10)]


def test_runs_fill_the_budget_left_after_the_three_reserved_fields():
    # 12 vars - 3 reserved = 9 fields = three enrolments of three fields each.
    items = [enrolment(user) for user in range(7)]

    assert split_by_input_vars("enrolments", items, {}, 12) == [range(0, 3), range(3, 6), range(6, 7)]


def test_items_of_different_sizes_and_other_params_count():
    items = [enrolment(1, timestart=1, timeend=2, suspend=0), enrolment(2), enrolment(3)]

    # 13 - 3 reserved - 1 for "field" = 9: the six-field item and one three-field item share a run.
    assert split_by_input_vars("enrolments", items, {"field": "x"}, 13) == [range(0, 2), range(2, 3)]


def test_every_item_lands_in_exactly_one_run_in_order():
    items = [enrolment(user, **({"timeend": 9} if user % 3 else {})) for user in range(1000)]

    runs = split_by_input_vars("enrolments", items, {}, 5000)

    assert [index for run in runs for index in run] == list(range(1000))
    for run in runs:
        assert len(encode_params({"enrolments": items[run.start : run.stop]})) <= 5000 - 3


def test_the_real_moodle_case_of_1800_enrolments_needs_two_calls():
    items = [enrolment(user) for user in range(1800)]

    runs = split_by_input_vars("enrolments", items, {}, 5000)

    assert [len(run) for run in runs] == [1665, 135]


def test_no_items_no_runs():
    assert split_by_input_vars("values", [], {"field": "id"}, 5000) == []


def test_the_largest_item_a_route_sends_fits_a_call_alone_at_the_smallest_max_input_vars():
    # Why split_by_input_vars needs no refusal of an item too large for any call: none can be sent.
    with pytest.raises(SettingsError, match="MOODLE_MAX_INPUT_VARS"):
        settings_for("https://moodle.test", "t", MOODLE_MAX_INPUT_VARS="8")
    smallest = settings_for("https://moodle.test", "t", MOODLE_MAX_INPUT_VARS="9").moodle_max_input_vars
    fullest = dict.fromkeys(EnrolmentSchema().fields, 1)  # every field an enrolment may carry

    assert split_by_input_vars("enrolments", [fullest, fullest], {}, smallest) == [range(0, 1), range(1, 2)]
    assert len(encode_params({"enrolments": [fullest]})) == smallest - RESERVED_INPUT_VARS
