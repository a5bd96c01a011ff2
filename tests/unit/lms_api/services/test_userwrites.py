"""Creating and updating users many at a time, against a mocked Moodle that knows a few users."""

from __future__ import annotations

import json

import pytest

from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity
from lms_api.services import userwrites
from tests.support.gateway import settings_for
from tests.unit.mocked_moodle import (
    INVALID_PARAMETER_BODY,
    ROUTE_FUNCTIONS,
    add,
    api_raised,
    form_of,
    prime,
    reset,
    sent_functions,
)

SETTINGS = settings_for("https://moodle.test", "token")
WRITER = Identity("registrar", frozenset({"users:write"}))
ON_SITE = [
    {"id": 3, "username": "student1", "email": "student1@example.com"},
    {"id": 4, "username": "student2", "email": "Student2@Example.com"},
]
LOOKUP = MoodleFunction.GET_USERS_BY_FIELD
CREATE = MoodleFunction.CREATE_USERS
UPDATE = MoodleFunction.UPDATE_USERS


def new_user(name, **fields):
    return {"username": name, "firstname": "Ada", "lastname": "L", "email": f"{name}@example.com",
            "password": "Secret#123", "auth": "manual", **fields}  # fmt: skip


def answer_lookups(rsps, users=ON_SITE):
    """core_user_get_users_by_field over ``users``, exact matches as on PostgreSQL."""

    def lookup(request):
        form = form_of(request)
        field = dict(form)["field"]
        values = {value for key, value in form if key.startswith("values[")}
        return 200, {}, json.dumps([user for user in users if str(user[field]) in values])

    rsps.add_callback("POST", "http://moodle.test/webservice/rest/server.php", callback=lookup,
                      match=[_function(LOOKUP)])  # fmt: skip


def _function(name):
    def match(request):
        found = dict(form_of(request)).get("wsfunction") == name
        return found, "" if found else "another function"

    return match


def answer_creates(rsps, first_id=100):
    """core_user_create_users giving ids from ``first_id`` on, in request order."""
    next_id = [first_id]

    def create(request):
        usernames = [value for key, value in form_of(request) if key.endswith("[username]")]
        answer = [{"id": next_id[0] + number, "username": name} for number, name in enumerate(usernames)]
        next_id[0] += len(usernames)
        return 200, {}, json.dumps(answer)

    rsps.add_callback("POST", "http://moodle.test/webservice/rest/server.php", callback=create,
                      match=[_function(CREATE)])  # fmt: skip


def created_forms(rsps, function=CREATE):
    return [form_of(call.request) for call in rsps.calls if dict(form_of(call.request))["wsfunction"] == function]


def reasons_of(error):
    return {user["index"]: [(r["field"], r["code"]) for r in user["reasons"]] for user in error.details["users"]}


def test_users_are_created_in_request_order_with_their_index_and_id(moodle, rsps):
    answer_lookups(rsps)
    answer_creates(rsps)

    wanted = [new_user("ada"), new_user("bob", createpassword=True, password=None)]
    del wanted[1]["password"]
    result = userwrites.create_users(moodle, wanted, SETTINGS)

    assert result == {
        "created": [{"index": 0, "id": 100, "username": "ada"}, {"index": 1, "id": 101, "username": "bob"}]
    }
    (form,) = created_forms(rsps)
    sent = dict(form)
    assert sent["users[0][password]"] == "Secret#123" and "users[0][createpassword]" not in sent
    assert sent["users[1][createpassword]"] == "1" and "users[1][password]" not in sent
    assert sent_functions(rsps).count(LOOKUP) == 2  # the usernames, then the emails


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"username": "Ada"}, ("username", "usernameinvalid")),
        ({"username": " ada"}, ("username", "usernameinvalid")),
        ({"username": "ada!"}, ("username", "usernameinvalid")),
        ({"username": "student1"}, ("username", "usernametaken")),
        ({"email": "not-an-email"}, ("email", "emailinvalid")),
        ({"email": "a" * 65 + "@example.com"}, ("email", "emailinvalid")),  # a local part of 64 at most
        ({"email": "ada@example.123"}, ("email", "emailinvalid")),  # a top-level domain starts with a letter
        ({"email": "STUDENT1@example.com"}, ("email", "emailtaken")),  # Moodle compares emails without case
        ({"email": "Student2@Example.com"}, ("email", "emailtaken")),  # stored in mixed case, asked as stored
        ({"password": "short1A!"[:7]}, ("password", "passwordweak")),
        ({"password": "nodigits!A"}, ("password", "passwordweak")),
        ({"password": "NOLOWER1!"}, ("password", "passwordweak")),
        ({"password": "noupper1!"}, ("password", "passwordweak")),
        ({"password": "NoSpecial1"}, ("password", "passwordweak")),
        ({"password": None}, ("password", "passwordmissing")),
        ({"auth": "mnet"}, ("auth", "authunknown")),
        ({"lang": "fr"}, ("lang", "langunknown")),
    ],
)
def test_each_reason_moodle_would_refuse_a_user_is_named_and_nothing_is_created(moodle, rsps, changes, reason):
    answer_lookups(rsps)
    user = {key: value for key, value in {**new_user("ada"), **changes}.items() if value is not None}

    error = api_raised(userwrites.create_users, moodle, [new_user("zed"), user], SETTINGS)

    assert error.code == "invalidusers"
    assert reasons_of(error) == {1: [reason]}
    assert error.status == (409 if reason[1].endswith("taken") else 400)
    assert error.details["users"][0]["username"] == user["username"]
    assert CREATE not in sent_functions(rsps)


def test_duplicates_inside_the_request_name_the_first_user_and_every_reason_of_a_user_is_listed(moodle, rsps):
    answer_lookups(rsps)
    wanted = [new_user("ada"), new_user("ada", email="Ada@Example.com", password="weak"), new_user("eve", auth="x")]

    error = api_raised(userwrites.create_users, moodle, wanted, SETTINGS)

    assert reasons_of(error) == {
        1: [("password", "passwordweak"), ("username", "usernameduplicate"), ("email", "emailduplicate")],
        2: [("auth", "authunknown")],
    }
    assert error.details["users"][0]["reasons"][1]["message"] == "The username 'ada' is also user 0's"
    assert "Password must be at least 8 characters long" in error.details["users"][0]["reasons"][0]["message"]
    assert error.message.startswith("Moodle would refuse 2 users, so nothing was written: user 1 ('ada'): ")


def test_the_password_policy_is_the_sites(moodle, rsps):
    answer_lookups(rsps)
    answer_creates(rsps)
    lenient = settings_for("https://moodle.test", "token", MOODLE_PASSWORD_POLICY="length=4,nonalphanumeric=0,upper=0")
    strict = settings_for("https://moodle.test", "token", MOODLE_PASSWORD_POLICY="digits=3,consecutive=2")

    assert userwrites.create_users(moodle, [new_user("ada", password="abc1")], lenient)["created"][0]["id"] == 100
    error = api_raised(userwrites.create_users, moodle, [new_user("bob", password="Aaaa#1bc")], strict)
    assert error.details["users"][0]["reasons"][0]["message"] == (
        "Password needs at least 3 digits; must not repeat a character more than 2 times in a row"
    )


def test_an_external_auth_needs_no_password(moodle, rsps):
    answer_lookups(rsps)
    answer_creates(rsps)
    user = new_user("ada", auth="ldap")
    del user["password"]

    assert userwrites.create_users(moodle, [user], SETTINGS)["created"] == [{"index": 0, "id": 100, "username": "ada"}]


def test_creation_is_split_under_max_input_vars_and_ids_follow_the_request(make_client, rsps):
    moodle = make_client(max_input_vars=20)  # two users of seven fields per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    answer_lookups(rsps)
    answer_creates(rsps)

    result = userwrites.create_users(moodle, [new_user(f"u{n}") for n in range(5)], SETTINGS)

    assert [user["id"] for user in result["created"]] == [100, 101, 102, 103, 104]
    assert [sum(key.endswith("[username]") for key, _ in form) for form in created_forms(rsps)] == [2, 2, 1]


def test_a_later_call_refused_for_a_username_taken_meanwhile_names_it_and_what_was_created(make_client, rsps):
    moodle = make_client(max_input_vars=20)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    site = list(ON_SITE)
    answer_lookups(rsps, site)
    add(rsps, CREATE, json=[{"id": 100, "username": "u0"}, {"id": 101, "username": "u1"}])

    def taken_meanwhile(request):
        site.append({"id": 50, "username": "u3", "email": "other@example.com"})
        return 200, {}, INVALID_PARAMETER_BODY

    rsps.add_callback("POST", "http://moodle.test/webservice/rest/server.php", callback=taken_meanwhile,
                      match=[_function(CREATE)])  # fmt: skip

    error = api_raised(userwrites.create_users, moodle, [new_user(f"u{n}") for n in range(5)], SETTINGS)

    assert (error.status, error.code) == (409, "invalidusers")
    assert reasons_of(error) == {3: [("username", "usernametaken")]}
    details = error.details
    assert details["created"] == [{"index": 0, "id": 100, "username": "u0"}, {"index": 1, "id": 101, "username": "u1"}]
    assert (details["not_created"], details["not_attempted"], details["outcome"]) == ([2, 3], [4], "partial")
    assert (details["calls"], details["failed_call"]) == (3, 2)
    assert "2 users created, 2 not created, 1 not attempted" in error.message


def test_a_failed_call_no_second_look_explains_is_moodles_error_with_the_account(make_client, rsps):
    moodle = make_client(max_input_vars=20)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    answer_lookups(rsps)
    add(rsps, CREATE, body=INVALID_PARAMETER_BODY)

    error = api_raised(userwrites.create_users, moodle, [new_user(f"u{n}") for n in range(3)], SETTINGS)

    assert (error.status, error.code) == (400, "invalidparameter")
    assert (error.details["created"], error.details["not_created"], error.details["not_attempted"]) == ([], [0, 1], [2])
    assert "outcome" not in error.details  # nothing was created


def test_a_call_whose_outcome_is_unknown_is_not_resent_and_says_so(make_client, rsps):
    moodle = make_client(max_input_vars=20)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    answer_lookups(rsps)
    add(rsps, CREATE, json=[{"id": 100, "username": "u0"}, {"id": 101, "username": "u1"}])
    add(rsps, CREATE, body=reset())

    error = api_raised(userwrites.create_users, moodle, [new_user(f"u{n}") for n in range(3)], SETTINGS)

    assert (error.status, error.details["outcome"]) == (504, "unknown")
    assert (error.details["unknown"], error.details["not_attempted"]) == ([2], [])
    assert len(error.details["created"]) == 2
    assert sent_functions(rsps).count(CREATE) == 2


def test_resuming_answers_the_users_an_earlier_attempt_created_and_creates_the_rest(moodle, rsps):
    earlier = {
        "id": 90,
        "username": "ada",
        "email": "ADA@example.com",
        "firstname": "Ada",
        "lastname": "L",
        "auth": "manual",
    }
    answer_lookups(rsps, [*ON_SITE, earlier])
    answer_creates(rsps)

    result = userwrites.create_users(moodle, [new_user("ada"), new_user("bob")], SETTINGS, resume=True)

    assert result["created"] == [{"index": 0, "id": 90, "username": "ada"}, {"index": 1, "id": 100, "username": "bob"}]
    (form,) = created_forms(rsps)
    assert [value for key, value in form if key.endswith("[username]")] == ["bob"]


@pytest.mark.parametrize(
    "differs", [{"firstname": "Adam"}, {"lastname": "Lee"}, {"auth": "ldap"}, {"email": "a@b.org"}]
)
def test_resuming_takes_only_an_account_as_the_request_describes_it_for_one_created(moodle, rsps, differs):
    other = {
        "id": 90,
        "username": "ada",
        "email": "ada@example.com",
        "firstname": "Ada",
        "lastname": "L",
        "auth": "manual",
    }
    answer_lookups(rsps, [{**other, **differs}])
    rsps.assert_all_requests_are_fired = False

    error = api_raised(lambda: userwrites.create_users(moodle, [new_user("ada")], SETTINGS, resume=True))

    assert reasons_of(error)[0][0] == ("username", "usernametaken")


def test_resuming_after_a_partial_answer_still_names_the_users_created_when_others_are_refused(moodle, rsps):
    earlier = {
        "id": 90,
        "username": "ada",
        "email": "ada@example.com",
        "firstname": "Ada",
        "lastname": "L",
        "auth": "manual",
    }
    answer_lookups(rsps, [earlier, {"id": 91, "username": "bob", "email": "else@example.com"}])

    error = api_raised(
        lambda: userwrites.create_users(moodle, [new_user("ada"), new_user("bob")], SETTINGS, resume=True)
    )

    assert (error.code, reasons_of(error)) == ("invalidusers", {1: [("username", "usernametaken")]})
    assert error.details["created"] == [{"index": 0, "id": 90, "username": "ada"}]
    assert (error.details["not_created"], error.details["outcome"]) == ([1], "partial")
    assert error.message.startswith("Moodle would refuse 1 user, so only the 1 created by an earlier attempt are on")
    assert CREATE not in sent_functions(rsps)


def test_an_answer_of_the_wrong_shape_after_a_create_leaves_its_users_unknown(make_client, rsps):
    moodle = make_client(max_input_vars=20)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    answer_lookups(rsps)
    add(rsps, CREATE, json=[{"id": 100, "username": "u0"}, {"id": 101, "username": "u1"}])
    add(rsps, CREATE, json=[{"id": 102, "username": "u2"}])  # one user answered for a call of two

    error = api_raised(userwrites.create_users, moodle, [new_user(f"u{n}") for n in range(5)], SETTINGS)

    assert (error.status, error.code, error.details["outcome"]) == (502, "badresponse", "unknown")
    assert (error.details["unknown"], error.details["not_attempted"]) == ([2, 3], [4])
    assert len(error.details["created"]) == 2


def test_a_username_moodle_hides_from_the_token_still_counts_as_taken(moodle, rsps):
    def hidden(request):  # this token may not see usernames: Moodle answers the user without the field
        values = [value for key, value in form_of(request) if key.startswith("values[")]
        return 200, {}, json.dumps([{"id": 3}] if "student1" in values else [])

    rsps.add_callback("POST", "http://moodle.test/webservice/rest/server.php", callback=hidden,
                      match=[_function(LOOKUP)])  # fmt: skip

    error = api_raised(userwrites.create_users, moodle, [new_user("zed"), new_user("student1")], SETTINGS)

    assert reasons_of(error) == {1: [("username", "usernametaken")]}
    assert error.details["users"][0]["reasons"][0]["message"] == "Username 'student1' is taken"


def test_values_past_the_bound_of_lookups_are_reasons_of_their_own(moodle, rsps):
    def hidden(request):  # every batch finds a user whose username is hidden; each value alone finds nobody
        values = [value for key, value in form_of(request) if key.startswith("values[")]
        return 200, {}, json.dumps([{"id": 3}] if len(values) > 1 else [])

    rsps.add_callback("POST", "http://moodle.test/webservice/rest/server.php", callback=hidden,
                      match=[_function(LOOKUP)])  # fmt: skip

    error = api_raised(userwrites.create_users, moodle, [new_user(f"u{n:02d}") for n in range(22)], SETTINGS)

    # The two batches, then 18 value-by-value calls: the usernames take them all, and the emails are left unchecked.
    assert sent_functions(rsps).count(LOOKUP) == 20
    assert reasons_of(error) == {
        index: [("username", "unchecked")] * (index >= 18) + [("email", "unchecked")] for index in range(22)
    }
    assert CREATE not in sent_functions(rsps)


def test_resuming_does_not_take_another_persons_account_for_one_created(moodle, rsps):
    answer_lookups(rsps)

    error = api_raised(
        lambda: userwrites.create_users(
            moodle, [new_user("student1", email="other@example.org")], SETTINGS, resume=True
        )
    )

    assert reasons_of(error) == {0: [("username", "usernametaken")]}


def test_prechecking_five_thousand_users_takes_four_lookups(moodle, rsps):
    answer_lookups(rsps)
    answer_creates(rsps)

    userwrites.create_users(moodle, [new_user(f"user{n}") for n in range(5000)], SETTINGS)

    assert sent_functions(rsps).count(LOOKUP) == 4  # usernames and emails, each in two calls of 5,000 variables


# -- updates ----------------------------------------------------------------------------------------------------------


def answer_updates(rsps, warnings=()):
    add(rsps, UPDATE, json={"warnings": list(warnings)})


def test_an_update_sends_only_the_given_fields_and_answers_the_ids(moodle, rsps):
    answer_lookups(rsps)
    answer_updates(rsps)

    result = userwrites.update_users(
        moodle, [{"id": 3, "firstname": "Ada"}, {"id": 4, "suspended": True}], SETTINGS, WRITER
    )

    assert result == {"updated": [3, 4], "failed": []}
    (form,) = created_forms(rsps, UPDATE)
    assert dict(form) | {"wstoken": "", "wsfunction": ""} == {
        "wstoken": "", "wsfunction": "", "moodlewsrestformat": "json",
        "users[0][id]": "3", "users[0][firstname]": "Ada", "users[1][id]": "4", "users[1][suspended]": "1",
    }  # fmt: skip


def test_missing_users_are_a_404_and_nothing_is_updated(moodle, rsps):
    answer_lookups(rsps)

    error = api_raised(
        userwrites.update_users, moodle, [{"id": 3, "city": "Oslo"}, {"id": 99, "city": "X"}], SETTINGS, WRITER
    )

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"missing_users": [99]})
    assert error.message == "No user with id 99 in Moodle; nothing was updated"
    assert UPDATE not in sent_functions(rsps)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ([{"id": 3, "username": "student2"}], {0: [("username", "usernametaken")]}),
        ([{"id": 4, "email": "STUDENT1@example.com"}], {0: [("email", "emailtaken")]}),
        ([{"id": 3, "username": "Student9"}], {0: [("username", "usernameinvalid")]}),
        ([{"id": 3, "email": "nope"}], {0: [("email", "emailinvalid")]}),
        ([{"id": 3, "password": "abc"}], {0: [("password", "passwordweak")]}),
        ([{"id": 3, "username": "x"}, {"id": 4, "username": "x"}], {1: [("username", "usernameduplicate")]}),
        ([{"id": 3, "city": "A"}, {"id": 3, "city": "B"}], {1: [("id", "userduplicate")]}),
        ([{"id": 3, "city": "A"}, {"id": 1, "city": "B"}], {1: [("id", "userguest")]}),
    ],
)
def test_an_update_moodle_would_refuse_is_named_before_anything_is_written(moodle, rsps, changes, reason):
    answer_lookups(rsps)
    rsps.assert_all_requests_are_fired = False  # a user named twice, or the guest, is refused before any lookup

    error = api_raised(userwrites.update_users, moodle, changes, SETTINGS, WRITER)

    assert (error.code, reasons_of(error)) == ("invalidusers", reason)
    assert UPDATE not in sent_functions(rsps)
    id_reason = next(iter(reason.values()))[0][0] == "id"
    assert (LOOKUP in sent_functions(rsps)) is not id_reason


def test_a_users_own_username_and_email_are_no_change(moodle, rsps):
    answer_lookups(rsps)
    answer_updates(rsps)

    result = userwrites.update_users(
        moodle, [{"id": 4, "username": "student2", "email": "student2@example.com"}], SETTINGS, WRITER
    )

    assert result["updated"] == [4]


@pytest.mark.parametrize(
    ("warning", "change", "failure", "status"),
    [
        ({"warningcode": "invaliduserid", "message": "Invalid user ID"}, {"city": "X"},
         ("usernotfound", "No user with id 4: deleted meanwhile"), 409),
        ({"warningcode": "useremailinvalid", "message": "error/useremailinvalid"}, {"email": "a@b.example"},
         ("useremailinvalid", "Moodle refused the email address 'a@b.example' as invalid"), 400),
        ({"warningcode": "dmlwriteexception", "message": "Error writing to database"}, {"username": "zed"},
         ("usernametaken", "Username 'zed' is taken"), 409),
        ({"warningcode": "dmlwriteexception", "message": "Error writing to database"}, {"city": "X"},
         ("dmlwriteexception", "Error writing to database"), 409),
        ({"warningcode": "usernotupdateddeleted", "message": "error/usernotupdateddeleted"}, {"city": "X"},
         ("usernotfound", "No user with id 4: deleted meanwhile"), 409),
        ({"warningcode": "useremailduplicate", "message": "Duplicate address"}, {"email": "b@b.example"},
         ("emailtaken", "Email 'b@b.example' is used by another user"), 409),
        ({"warningcode": "<b>odd</b>", "message": "x"}, {"city": "X"},
         ("moodlewarning", "Moodle refused the user without a code"), 409),
    ],
)  # fmt: skip
def test_moodles_warnings_become_failures_in_the_gateways_terms(moodle, rsps, warning, change, failure, status):
    answer_lookups(rsps)
    answer_updates(rsps, [{"item": "user", "itemid": 4, **warning}])

    error = api_raised(
        userwrites.update_users, moodle, [{"id": 3, "city": "Oslo"}, {"id": 4, **change}], SETTINGS, WRITER
    )

    assert (error.status, error.code) == (status, "usersnotupdated")
    assert error.details == {"updated": [3], "failed": [{"id": 4, "code": failure[0], "message": failure[1]}]}
    assert error.message == "Moodle updated 1 of 2 users and refused user with id 4"


def test_an_update_moodle_cannot_answer_leaves_the_call_unknown(make_client, rsps):
    moodle = make_client(max_input_vars=10)  # three users of two fields per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    answer_lookups(rsps, [{"id": n, "username": f"u{n}", "email": f"u{n}@x.org"} for n in range(11, 16)])
    answer_updates(rsps, [{"item": "user", "itemid": 12, "warningcode": "invaliduserid", "message": "Invalid user ID"}])
    add(rsps, UPDATE, json={"exception": "core\\exception\\invalid_response_exception", "errorcode": "invalidresponse",
                            "message": "Invalid response value detected"})  # fmt: skip

    error = api_raised(
        userwrites.update_users, moodle, [{"id": n, "city": "X"} for n in range(11, 16)], SETTINGS, WRITER
    )

    assert error.details["outcome"] == "unknown"
    assert (error.details["updated"], error.details["unknown"], error.details["not_attempted"]) == (
        [11, 13], [14, 15], [])  # fmt: skip
    assert [failure["id"] for failure in error.details["failed"]] == [12]
    assert "stricter than MOODLE_PASSWORD_POLICY" in error.message


@pytest.mark.parametrize("protected", [2, 17])
def test_an_administrator_is_changed_only_with_the_admin_scope(moodle, rsps, protected):
    settings = settings_for("https://moodle.test", "token", MOODLE_ADMIN_USER_IDS="2,17")
    answer_lookups(rsps, [*ON_SITE, {"id": protected, "username": "admin", "email": "admin@example.com"}])
    answer_updates(rsps)
    rsps.assert_all_requests_are_fired = False
    changes = [{"id": 3, "city": "Oslo"}, {"id": protected, "password": "Takeover#1"}]

    error = api_raised(userwrites.update_users, moodle, changes, settings, WRITER)

    assert (error.status, error.code) == (403, "forbidden")
    assert error.details == {"required_scope": "admin", "users": [protected]}
    assert sent_functions(rsps).count(LOOKUP) == 0  # refused before Moodle is asked anything
    admin = Identity("root", frozenset({"admin"}))
    assert userwrites.update_users(moodle, changes, settings, admin)["updated"] == [3, protected]


def test_a_username_kept_as_it_is_is_not_taken_for_the_cause_of_a_write_failure(moodle, rsps):
    answer_lookups(rsps)
    warning = {"item": "user", "itemid": 3, "warningcode": "dmlwriteexception", "message": "Error writing to database"}
    answer_updates(rsps, [warning])

    error = api_raised(
        userwrites.update_users, moodle, [{"id": 3, "username": "student1", "city": "X"}], SETTINGS, WRITER
    )

    assert error.details["failed"] == [{"id": 3, "code": "dmlwriteexception", "message": "Error writing to database"}]


def test_an_update_of_many_deleted_users_costs_twenty_lookups_at_most(moodle, rsps):
    deleted = {"exception": "dml_missing_record_exception", "errorcode": "invalidrecordunknown", "message": "x"}
    add(rsps, LOOKUP, json=deleted)  # every batch holds a deleted user's id, and so does every id alone

    error = api_raised(
        userwrites.update_users, moodle, [{"id": n, "city": "X"} for n in range(100, 164)], SETTINGS, WRITER
    )

    assert sent_functions(rsps).count(LOOKUP) <= 20
    assert (error.status, error.code) == (404, "usernotfound")
    checked = error.details["missing_users"] + error.details["unchecked_users"]
    assert sorted(checked) == list(range(100, 164)) and error.details["unchecked_users"]
