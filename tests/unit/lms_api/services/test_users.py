"""The users service against a mocked Moodle."""

from __future__ import annotations

import json

import pytest
import responses

from lms_api.errors import ApiError
from lms_api.moodle.functions import MoodleFunction
from lms_api.services import users
from tests.unit.mocked_moodle import (
    ROUTE_FUNCTIONS,
    URL,
    add,
    form_of,
    prime,
    sent,
    sent_functions,
    users_answer,
    ws_function,
)


def user(user_id, username, email, idnumber=""):
    return {"id": user_id, "username": username, "email": email, "idnumber": idnumber, "fullname": username}


def test_missing_users_are_named_as_the_caller_spelled_them(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[user(3, "ada", "Ada@Example.com")])

    found = users.users_by_field(moodle, "email", ["ada@example.com", "Nobody@Example.com"])

    assert [u["id"] for u in found["users"]] == [3]
    assert found["missing"] == ["Nobody@Example.com"]


def test_usernames_are_sent_lower_case_and_matched_as_sent(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[user(3, "ada", "a@x")])

    found = users.users_by_field(moodle, "username", ["Ada", "ada", "Bob"])

    values = [value for key, value in form_of(rsps.calls[-1].request) if key.startswith("values")]
    assert values == ["ada", "bob"]
    assert found["missing"] == ["Bob"]


def test_values_are_asked_one_by_one_when_moodle_hides_the_field(moodle, rsps):
    hidden = {"id": 3, "fullname": "Ada Lovelace"}  # a token that may not see idnumbers
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[hidden])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[hidden])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[])

    found = users.users_by_field(moodle, "idnumber", ["S001", "X9"])

    assert found["missing"] == ["X9"]
    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 3


def test_ids_are_matched_as_integers(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[user(4, "b", "b@x")])

    assert users.users_by_field(moodle, "id", [4, 5])["missing"] == [5]


def test_many_values_are_split_over_calls_that_fit_max_input_vars(make_client, rsps):
    moodle = make_client(max_input_vars=10)  # 10 - 3 reserved - 1 for field = 6 values per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[user(3, "u3", "3@x")])

    found = users.users_by_field(moodle, "id", list(range(1, 15)))

    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 3
    assert found["users"] == [user(3, "u3", "3@x")]
    assert len(found["missing"]) == 13


def hidden_user(user_id):
    return {"id": user_id, "fullname": f"User {user_id}"}  # a token that may not see idnumbers


def test_values_asked_one_by_one_are_bounded_and_the_rest_are_unchecked(moodle, rsps):
    values = [f"S{n:03}" for n in range(30)]
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[hidden_user(3)])
    for n in range(users.MAX_SINGLE_VALUE_CALLS):
        add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[hidden_user(3)] if n == 0 else [])

    found = users.users_by_field(moodle, "idnumber", values)

    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 1 + users.MAX_SINGLE_VALUE_CALLS == 21
    assert found["missing"] == values[1:20]
    assert found["unchecked"] == values[20:]
    assert [u["id"] for u in found["users"]] == [3]


def test_one_value_spelled_twice_is_asked_alone_once(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[{"id": 3, "fullname": "Ada"}])  # usernames hidden
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[{"id": 3, "fullname": "Ada"}])

    found = users.users_by_field(moodle, "username", ["Ghost", "ghost", "ada"])

    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 3
    assert (found["missing"], found["unchecked"]) == (["Ghost", "ghost"], [])


def test_nothing_is_unchecked_when_moodle_shows_the_field(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[])

    found = users.users_by_field(moodle, "email", [f"u{n}@x" for n in range(50)])

    assert (len(found["missing"]), found["unchecked"]) == (50, [])
    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 1


def test_missing_user_ids_are_named_in_the_order_given(make_client, rsps):
    moodle = make_client(max_input_vars=6)  # 6 - 3 reserved - 1 for field = two ids per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(4))

    assert users.user_ids(moodle, [9, 4, 9, 7]) == users.UserIds(missing=[9, 7], deleted=[], unchecked=[])
    assert sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD) == 2
    assert (sent(rsps, 1)["field"], sent(rsps, 1)["values[0]"], sent(rsps, 1)["values[1]"]) == ("id", "9", "4")


def test_a_not_found_message_names_at_most_twenty_ids_and_details_list_them_all():
    error = users.user_not_found(list(range(1, 26)))

    assert error.message == f"No users with ids {', '.join(map(str, range(1, 21)))} and 5 more in Moodle"
    assert error.details == {"missing_users": list(range(1, 26))}


# -- Moodle 5.0 fails the whole lookup when one value is a deleted user's -------------------------------------------

MISSING_RECORD = {
    "exception": "dml_missing_record_exception",
    "errorcode": "invalidrecordunknown",
    "message": "Can't find data record in database.",
}


def moodle_with_deleted_users(rsps, existing, deleted, errorcode="invalidrecordunknown"):
    """core_user_get_users_by_field(id) as Moodle 5.0 answers it: any deleted user among the values fails the call."""

    def answer(request):
        values = [int(value) for key, value in form_of(request) if key.startswith("values")]
        if set(values) & set(deleted):
            return 200, {}, json.dumps({**MISSING_RECORD, "errorcode": errorcode})
        return 200, {}, json.dumps(users_answer(*(value for value in values if value in existing)))

    rsps.add_callback(responses.POST, URL, callback=answer, match=[ws_function(MoodleFunction.GET_USERS_BY_FIELD)])


def lookups(rsps):
    return sent_functions(rsps).count(MoodleFunction.GET_USERS_BY_FIELD)


@pytest.mark.parametrize("errorcode", ["invalidrecordunknown", "invaliduser"], ids=["production", "debug-mode"])
def test_deleted_users_are_found_by_halving_the_failed_lookup_and_count_as_missing(moodle, rsps, errorcode):
    moodle_with_deleted_users(rsps, existing={3, 4, 5, 6}, deleted={7, 11}, errorcode=errorcode)

    checked = users.user_ids(moodle, [3, 4, 7, 5, 6, 11, 99, 2])

    assert checked == users.UserIds(missing=[7, 11, 99, 2], deleted=[7, 11], unchecked=[])
    assert lookups(rsps) == 1 + 2 + 2 + 2 + 2 + 2  # the batch, then halves down to each deleted user alone


def test_one_deleted_user_among_ten_thousand_ids_costs_a_bounded_number_of_calls(moodle, rsps):
    moodle_with_deleted_users(rsps, existing=set(range(1, 10001)) - {4242}, deleted={4242})

    checked = users.user_ids(moodle, list(range(1, 10001)))

    assert (checked.missing, checked.deleted, checked.unchecked) == ([4242], [4242], [])
    assert lookups(rsps) == 3 + 24  # three batches of max_input_vars, then two calls a halving of one of them


def test_values_past_the_bound_of_halving_calls_are_unchecked_not_missing(moodle, rsps):
    deleted = set(range(100, 140))  # forty deleted users: more than the bound lets the lookup find
    moodle_with_deleted_users(rsps, existing=set(range(1, 100)), deleted=deleted)

    checked = users.user_ids(moodle, list(range(1, 140)))

    assert checked.unchecked and set(checked.unchecked) <= deleted
    assert set(checked.missing) == set(checked.deleted) == deleted - set(checked.unchecked)
    assert lookups(rsps) <= 1 + users.MAX_DELETED_SEARCH_CALLS


def test_by_field_lists_a_deleted_users_id_as_missing(moodle, rsps):
    moodle_with_deleted_users(rsps, existing={3}, deleted={7})

    found = users.users_by_field(moodle, "id", [3, 7])

    assert ([u["id"] for u in found["users"]], found["missing"], found["unchecked"]) == ([3], [7], [])


def test_another_moodle_error_of_the_lookup_is_passed_on(moodle, rsps):
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json={**MISSING_RECORD, "errorcode": "dmlreadexception"})

    with pytest.raises(ApiError) as info:
        users.user_ids(moodle, [3, 7])

    assert (info.value.status, info.value.code) == (502, "dmlreadexception")
    assert lookups(rsps) == 1
