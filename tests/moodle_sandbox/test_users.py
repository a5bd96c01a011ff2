"""Bulk user creation and updates in the sandbox beyond the recorded answers: the order of Moodle 5.0's checks, what
a refused user leaves behind, the per-call index of taken usernames and emails, and the details the token user sees
of itself (``test_golden.py`` replays the recorded calls)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.errors import MoodleException
from moodle_sandbox.php import php_json
from moodle_sandbox.phpform import parse_php_form
from moodle_sandbox.records import User
from moodle_sandbox.server import SandboxServer, start_sandbox
from moodle_sandbox.site import DEFAULT_MAX_INPUT_VARS, SandboxSite
from tests.moodle_sandbox.test_functions import GOLDEN_INVALID_PARAMETER, TOKEN, Clock, call, error
from tests.moodle_sandbox.test_golden import golden_text

NOW = 1800000000
WEAK = "<div>Passwords must be at least 8 characters long.</div>"


@pytest.fixture
def site() -> SandboxSite:
    return SandboxSite(TOKEN, base_url="http://moodle.test", clock=Clock(NOW))


@pytest.fixture
def debug_site() -> SandboxSite:
    return SandboxSite(TOKEN, base_url="http://moodle.test", clock=Clock(NOW), debug=True)


def new(username: str, **fields: Any) -> dict[str, Any]:
    user = {"username": username, "password": "Sandbox#1234", "firstname": "New", "lastname": "User"}
    return {**user, "email": f"{username}@example.org", **fields}


def create(site: SandboxSite, *users: dict[str, Any]) -> list[dict[str, Any]]:
    return call(site, "core_user_create_users", users=list(users))


def update(site: SandboxSite, *users: dict[str, Any]) -> dict[str, Any]:
    return call(site, "core_user_update_users", users=list(users))


def details(site: SandboxSite, user_id: int) -> dict[str, Any]:
    [user] = call(site, "core_user_get_users_by_field", field="id", values=[str(user_id)])
    return user


def warning(user_id: int, code: str, message: str) -> dict[str, Any]:
    return {"item": "user", "itemid": user_id, "warningcode": code, "message": message}


# --- core_user_create_users -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "blank"), [("username", ""), ("firstname", " \t "), ("lastname", " ")])
def test_a_blank_name_is_refused_before_anything_else(debug_site, name, blank):
    """The first check of create_users(), before the username is looked up (student1 is taken). PARAM_USERNAME
    lets only an empty username through, the names any whitespace."""
    user = new("student1", email="student1@example.com", password="abc") | {name: blank}
    body = error(debug_site, "core_user_create_users", users=[user])
    assert (body["errorcode"], body["debuginfo"]) == ("invalidparameter", f"The field {name} cannot be blank")


def test_checks_come_in_moodles_order(debug_site):
    """Taken username, then auth, then password, then email: each refusal names the first broken rule."""

    def reason(**fields: Any) -> str:
        return error(debug_site, "core_user_create_users", users=[new("newbie") | fields])["debuginfo"]

    assert reason(username="student1", auth="webservice") == "Username already exists: student1"
    assert reason(auth="webservice", password="") == "Invalid authentication type: webservice"
    assert reason(password="", email="nope") == "Invalid password: you must provide a password, or set createpassword."
    assert reason(email="nope", password="abc") == "Email address is invalid: nope"
    assert reason(email="STUDENT1@example.com", password="abc") == "Email address already exists: STUDENT1@example.com"
    assert error(debug_site, "core_user_create_users", users=[new("newbie", password="abc")])["errorcode"] == WEAK + (
        "<div>Passwords must have at least 1 digit(s).</div>"
        "<div>Passwords must have at least 1 upper case letter(s).</div>"
        "<div>The password must have at least 1 special character(s) such as *, -, or #.</div>"
    )


def test_users_earlier_in_the_call_take_their_username_and_email(debug_site):
    same_email = [new("one", email="same@example.org"), new("two", email="Same@Example.org")]
    body = error(debug_site, "core_user_create_users", users=same_email)
    assert body["debuginfo"] == "Email address already exists: Same@Example.org"
    body = error(debug_site, "core_user_create_users", users=[new("one"), new("one", email="other@example.org")])
    assert body["debuginfo"] == "Username already exists: one"


def test_a_deleted_users_row_still_holds_its_mangled_username_and_email(debug_site):
    deleted = debug_site.state.users[7]
    body = error(debug_site, "core_user_create_users", users=[new(deleted.username)])
    assert body["debuginfo"] == f"Username already exists: {deleted.username}"
    assert create(debug_site, new("student4")) == [{"id": 8, "username": "student4"}]


def test_the_names_of_a_rolled_back_batch_are_free_again(site):
    """The index of taken names lives for one call: the users of a failed batch do not stay taken."""
    with pytest.raises(MoodleException):
        create(site, new("carol"), new("dave"), new("student1"))
    assert sorted(site.state.users) == [1, 2, 3, 4, 5, 6, 7]
    assert create(site, new("carol"), new("dave")) == [{"id": 10, "username": "carol"}, {"id": 11, "username": "dave"}]
    # Names freed by an update later are free for a creation too: each call reads the table again.
    assert update(site, {"id": 10, "username": "caroline", "email": "caroline@example.org"}) == {"warnings": []}
    assert create(site, new("carol")) == [{"id": 12, "username": "carol"}]


def test_a_rolled_back_creation_takes_out_only_the_rows_it_added(site):
    """site.inserting() remembers the keys of the user table, not a copy of every row: a block that raises loses the
    rows it added, one that ends keeps them."""
    with pytest.raises(RuntimeError), site.lock, site.inserting("users"):
        site.state.users[100] = User(100, "inserted", "I", "N", "inserted@example.org")
        raise RuntimeError
    assert sorted(site.state.users) == [1, 2, 3, 4, 5, 6, 7]
    with site.lock, site.inserting("users"):
        site.state.users[100] = User(100, "kept", "K", "P", "kept@example.org")
    assert site.state.users[100].username == "kept"


def test_created_users_keep_the_profile_fields_the_admin_sees(site):
    fields = {"institution": "MIT", "city": "Oslo", "country": "NO", "description": "Hello", "department": "Maths"}
    [created] = create(site, new("fields", **fields))
    user = details(site, created["id"])
    assert {name: user.get(name) for name in fields} == fields
    assert user["descriptionformat"] == 1
    assert list(user) == [
        "id", "username", "firstname", "lastname", "fullname", "email", "department", "institution", "firstaccess",
        "lastaccess", "auth", "suspended", "confirmed", "lang", "theme", "timezone", "mailformat", "trackforums",
        "description", "descriptionformat", "city", "country", "profileimageurlsmall", "profileimageurl",
    ]  # fmt: skip
    # Without them, Moodle leaves the keys out (description is NULL, the others empty).
    plain = details(site, create(site, new("plain"))[0]["id"])
    assert not {"institution", "city", "country", "description", "descriptionformat", "idnumber"} & set(plain)


def test_createpassword_makes_the_new_user_change_it_at_first_login(site):
    [created] = create(site, new("bob", password="", createpassword=1))
    assert site.state.users[created["id"]].preferences == {"auth_forcepasswordchange": "1"}
    assert "preferences" not in details(site, created["id"])  # only the token user sees preferences


def test_a_big_create_past_max_input_vars_loses_its_last_fields_and_creates_nobody():
    """PHP keeps the first max_input_vars variables: with the REST server's three, 1000 users of five fields each
    lose the last user's firstname, lastname and email, and the whole call is refused."""
    sandbox = start_sandbox(token=TOKEN)
    try:

        def post(count: int) -> requests.Response:
            users = [new(f"bulk{index}") for index in range(count)]
            data = [("wstoken", TOKEN), ("wsfunction", "core_user_create_users"), ("moodlewsrestformat", "json")]
            data += encode_params({"users": users})
            assert len(data) == 3 + 5 * count
            return requests.post(f"{sandbox.url}/webservice/rest/server.php", data=data, timeout=30)

        assert sandbox.site.max_input_vars == DEFAULT_MAX_INPUT_VARS == 5000
        refused = post(1000)
        assert refused.content == GOLDEN_INVALID_PARAMETER.encode()
        with sandbox.site.lock:
            assert len(sandbox.site.state.users) == 7
        assert len(post(999).json()) == 999
    finally:
        sandbox.stop()


def test_five_thousand_users_are_created_in_one_call_on_a_site_of_ten_thousand(site):
    """Each creation asks the call's index, not every user of the site: 5,000 on 10,000 take well under a second
    here, where reading every user for each took 18 s."""
    for index in range(10000):
        user_id = site.state.next_id("user")
        site.state.users[user_id] = User(user_id, f"old{index}", "O", "L", f"old{index}@example.org")
    users = [new(f"bulk{index}") for index in range(5000)]
    pairs = [("wstoken", TOKEN), ("wsfunction", "core_user_create_users"), *encode_params({"users": users})]
    form, _ = parse_php_form(pairs, len(pairs))
    started = time.perf_counter()
    created = site.rest(form)
    elapsed = time.perf_counter() - started
    assert [user["username"] for user in created] == [f"bulk{index}" for index in range(5000)]
    assert elapsed < 5, elapsed


# --- core_user_update_users -------------------------------------------------------------------------------------------


def test_update_writes_every_field_it_is_given(site):
    changes = {
        "firstname": "Augusta",
        "lastname": "King",
        "idnumber": "S001-B",
        "institution": "Analytical Society",
        "department": "Engines",
        "city": "London",
        "country": "GB",
        "lang": "en",
        "timezone": "Europe/London",
        "description": "Notes on the engine",
        "auth": "nologin",
        "suspended": 1,
        "password": "Engine#1843",
    }
    site.clock.now = NOW + 60
    assert update(site, {"id": 3, **changes}) == {"warnings": []}
    user = details(site, 3)
    assert user["fullname"] == "Augusta King"
    assert {name: user[name] for name in changes if name not in ("suspended", "password")} == {
        name: value for name, value in changes.items() if name not in ("suspended", "password")
    }
    assert user["suspended"] is True
    assert site.state.users[3].timemodified == NOW + 60
    assert update(site, {"id": 3, "suspended": 0})["warnings"] == []
    assert details(site, 3)["suspended"] is False


def test_a_country_moodle_does_not_list_is_cleared_as_core_user_validate_does(site, debug_site):
    """PARAM_ALPHA lets "uk", "gb" or "XX" through; user_create_user() and user_update_user() then keep only a code
    of Moodle's list, and replace anything else by the site's default country (none)."""
    assert update(site, {"id": 3, "country": "NO"}, {"id": 4, "country": "gb"}, {"id": 5, "country": "XX"}) == {
        "warnings": []
    }
    assert [site.state.users[user_id].country for user_id in (3, 4, 5)] == ["NO", "", ""]
    assert "country" not in details(site, 4)
    [created] = create(site, new("abroad", country="uk"))
    assert site.state.users[created["id"]].country == ""
    assert (
        'expecting "alpha" type'
        in error(debug_site, "core_user_update_users", users=[{"id": 3, "country": "G1"}])["debuginfo"]
    )


def test_fields_not_sent_are_left_as_they_were(site):
    assert update(site, {"id": 4, "city": "Manchester"}) == {"warnings": []}
    user = site.state.users[4]
    assert (user.firstname, user.lastname, user.email, user.idnumber, user.city) == (
        "Alan",
        "Turing",
        "student2@example.com",
        "S002",
        "Manchester",
    )


def test_an_email_another_user_has_is_refused_whatever_its_case(site, debug_site):
    answer = update(site, {"id": 4, "email": "STUDENT1@example.com", "firstname": "Changed"})
    assert answer == {"warnings": [warning(4, "useremailduplicate", "Duplicate address")]}
    assert (site.state.users[4].email, site.state.users[4].firstname) == ("student2@example.com", "Alan")
    # The user's own address, in another case, is not somebody else's.
    assert update(site, {"id": 4, "email": "Student2@Example.com"}) == {"warnings": []}
    assert site.state.users[4].email == "Student2@Example.com"
    # Debug mode appends the exception's debuginfo to the language string.
    debug = update(debug_site, {"id": 4, "email": "student1@example.com"})
    assert debug["warnings"][0]["message"] == "Duplicate address (Duplicate email address)"


def test_an_email_freed_earlier_in_the_call_can_be_taken(site):
    answer = update(site, {"id": 3, "email": "ada@example.org"}, {"id": 4, "email": "student1@example.com"})
    assert answer == {"warnings": []}
    assert (site.state.users[3].email, site.state.users[4].email) == ("ada@example.org", "student1@example.com")


def test_a_username_taken_fails_in_the_database_and_leaves_the_user_unchanged(site, debug_site):
    answer = update(site, {"id": 4, "username": "student1", "firstname": "Changed"}, {"id": 5, "city": "Arlington"})
    assert answer == {"warnings": [warning(4, "dmlwriteexception", "Error writing to database")]}
    assert (site.state.users[4].username, site.state.users[4].firstname) == ("student2", "Alan")
    assert site.state.users[5].city == "Arlington"  # the next user is still written
    debug = update(debug_site, {"id": 4, "username": "student1"})["warnings"][0]["message"]
    assert debug.startswith("Error writing to database (ERROR:  duplicate key value violates unique constraint")
    # A username freed earlier in the same call is free.
    swap = update(site, {"id": 3, "username": "ada"}, {"id": 4, "username": "student1"})
    assert swap == {"warnings": []}
    assert (site.state.users[3].username, site.state.users[4].username) == ("ada", "student1")


def test_deleted_and_guest_users_are_not_updated(site, debug_site):
    answer = update(site, {"id": 7, "firstname": "Back"}, {"id": 1, "firstname": "Visitor"})
    assert answer == {
        "warnings": [
            warning(7, "usernotupdateddeleted", "error/usernotupdateddeleted"),
            warning(1, "usernotupdatedguest", "error/usernotupdatedguest"),
        ]
    }
    assert (site.state.users[7].firstname, site.state.users[1].firstname) == ("Dorothy", "Guest user")
    debug = update(debug_site, {"id": 7}, {"id": 1}, {"id": 999}, {"id": 4, "email": "nope"})
    assert [warning["message"] for warning in debug["warnings"]] == [
        "error/usernotupdateddeleted (User is a deleted user)",
        "error/usernotupdatedguest (Cannot update guest account)",
        "Invalid user ID (Invalid user ID)",
        "error/useremailinvalid (Invalid email address)",
    ]


def test_the_checks_come_in_moodles_order(site):
    """A missing user before anything; the email before the password; the password before the username."""
    answer = update(
        site,
        {"id": 999, "email": "nope", "password": "abc"},
        {"id": 4, "email": "nope", "password": "abc"},
        {"id": 5, "email": "student1@example.com", "password": "abc", "username": "student1"},
    )
    assert answer["warnings"] == [
        warning(999, "invaliduserid", "Invalid user ID"),
        warning(4, "useremailinvalid", "error/useremailinvalid"),
        warning(5, "useremailduplicate", "Duplicate address"),
    ]
    body = error(site, "core_user_update_users", users=[{"id": 4, "password": "abc", "username": "student1"}])
    assert body["exception"] == "core\\exception\\invalid_response_exception"


def test_a_weak_password_fails_the_answer_after_every_other_user_is_written(site):
    """Moodle turns the policy's HTML into a warningcode, which its own answer validation refuses: the caller gets
    invalidresponse, while the users before and after the weak one were written and the weak one was not."""
    users = [{"id": 3, "city": "Before"}, {"id": 4, "password": "abc", "city": "Weak"}, {"id": 5, "city": "After"}]
    body = error(site, "core_user_update_users", users=users)
    assert php_json(body).decode() == golden_text("core_user_update_users__weak_password.json")
    assert [site.state.users[user_id].city for user_id in (3, 4, 5)] == ["Before", "", "After"]
    # An empty password is sent, so it is checked, and fails too.
    assert error(site, "core_user_update_users", users=[{"id": 4, "password": ""}])["errorcode"] == "invalidresponse"


def test_debug_mode_shows_the_path_to_the_warningcode_the_answer_refused(debug_site):
    body = error(debug_site, "core_user_update_users", users=[{"id": 4, "password": "abcdefgH1"}])
    inner = (
        'Invalid external api response: the value is "<div>The password must have at least 1 special character(s) '
        'such as *, -, or #.</div>" of PHP type "string", the server was expecting "alphanum" type'
    )
    code = f"warningcode => Invalid response value detected ({inner}): {inner}"
    assert body["debuginfo"] == f"warnings => Invalid response value detected ({code}): {code}"
    assert body["message"] == f"Invalid response value detected ({body['debuginfo']})"


def test_update_parameters_are_cleaned_like_moodle(debug_site):
    def refused(**fields: Any) -> str:
        return error(debug_site, "core_user_update_users", users=[{"id": 3, **fields}])["debuginfo"]

    assert 'the server was expecting "username" type' in refused(username="Ada")
    assert 'the server was expecting "bool" type' in refused(suspended="yes")
    assert 'the server was expecting "lang" type' in refused(lang="de")
    assert (
        "Missing required key in single structure: id"
        in error(debug_site, "core_user_update_users", users=[{"firstname": "No id"}])["debuginfo"]
    )
    assert debug_site.state.users[3].firstname == "Ada"


def test_update_users_is_in_the_default_service(site):
    functions = [function["name"] for function in call(site, "core_webservice_get_site_info")["functions"]]
    assert "core_user_update_users" in functions


# --- The token user's own details -------------------------------------------------------------------------------------


def test_only_the_token_user_sees_preferences_with_when_they_were_read(site):
    admin = details(site, 2)
    assert admin["preferences"] == [{"name": "_lastloaded", "value": NOW}]
    assert list(admin)[-3:] == ["profileimageurlsmall", "profileimageurl", "preferences"]
    site.admin.preferences |= {"htmleditor": "textarea", "auth_forcepasswordchange": "0"}
    site.clock.now = NOW + 5
    assert details(site, 2)["preferences"] == [
        {"name": "htmleditor", "value": "textarea"},
        {"name": "auth_forcepasswordchange", "value": "0"},
        {"name": "_lastloaded", "value": NOW + 5},
    ]
    site.state.users[3].preferences["htmleditor"] = "tiny"
    assert "preferences" not in details(site, 3)
    # The stored values are text, the time a number, as PHP's json_encode() writes them.
    assert b'{"name":"htmleditor","value":"textarea"}' in php_json(details(site, 2))
    assert b'{"name":"_lastloaded","value":1800000005}' in php_json(details(site, 2))


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    sandbox = start_sandbox(token=TOKEN)
    yield sandbox
    sandbox.stop()


def test_updates_over_http(server):
    data = [("wstoken", TOKEN), ("wsfunction", "core_user_update_users"), ("moodlewsrestformat", "json")]
    data += encode_params({"users": [{"id": 3, "firstname": "Augusta"}, {"id": 999999, "firstname": "Ghost"}]})
    response = requests.post(f"{server.url}/webservice/rest/server.php", data=data, timeout=5)
    assert response.content == golden_text("core_user_update_users__missing_id.json").encode()
    with server.site.lock:
        assert server.site.state.users[3].firstname == "Augusta"


# --- Preferences given to a creation or an update ---------------------------------------------------------------------


def prefs(**values: str) -> list[dict[str, str]]:
    return [{"type": name, "value": value} for name, value in values.items()]


def test_a_new_user_takes_the_preferences_the_admin_may_set_for_others(site):
    preferences = prefs(
        forum_markasreadonnotification="0",
        auth_forcepasswordchange="1",
        blogpagesize="20",  # only the user themselves may set it
        message_provider_moodle_notices_enabled="popup",  # a preference core_user does not define
        nosuchpreference="x",
    )
    [created] = create(site, new("prefs", preferences=preferences))
    assert site.state.users[created["id"]].preferences == {
        "forum_markasreadonnotification": "0",
        "auth_forcepasswordchange": "1",
    }


def test_preference_values_are_cleaned_and_kept_to_their_choices(site):
    preferences = prefs(auth_forcepasswordchange="0", forum_markasreadonnotification="7")
    [created] = create(site, new("choices", createpassword=1, password="", preferences=preferences))
    # createpassword set the first one to 1; the preferences come after and may set it back.
    assert site.state.users[created["id"]].preferences == {
        "auth_forcepasswordchange": "0",
        "forum_markasreadonnotification": "1",  # not a choice: the default
    }
    assert update(site, {"id": 3, "preferences": prefs(auth_forcepasswordchange="2abc")}) == {"warnings": []}
    assert site.state.users[3].preferences == {"auth_forcepasswordchange": "0"}  # (int) "2abc" is 2: the first choice


def test_the_admin_sets_their_own_preferences_and_sees_them(site):
    preferences = prefs(
        blogpagesize="25 per page",
        userselector_optionscollapsed="off",
        filepicker_recentlicense="cc-4.0/by",
        auth_forcepasswordchange="1",  # only for others
    )
    assert update(site, {"id": 2, "preferences": preferences}) == {"warnings": []}
    assert details(site, 2)["preferences"] == [
        {"name": "blogpagesize", "value": "25"},
        {"name": "userselector_optionscollapsed", "value": "0"},
        {"name": "filepicker_recentlicense", "value": "cc-40by"},
        {"name": "_lastloaded", "value": NOW},
    ]
    # Another user's own-only preference is not the admin's to set.
    assert update(site, {"id": 3, "preferences": prefs(blogpagesize="5")}) == {"warnings": []}
    assert site.state.users[3].preferences == {}


def test_a_refused_update_sets_no_preference(site):
    answer = update(
        site, {"id": 4, "email": "student1@example.com", "preferences": prefs(auth_forcepasswordchange="1")}
    )
    assert answer["warnings"][0]["warningcode"] == "useremailduplicate"
    assert site.state.users[4].preferences == {}


def test_participants_carry_the_profile_fields_and_only_the_token_user_its_preferences(site):
    """get_enrolled_users() answers user_get_user_details() cut to its own returns description, in that order."""
    update(site, {"id": 3, "institution": "Analytical Society", "city": "London", "country": "GB", "description": "Hi"})
    enrolments = [{"roleid": 5, "userid": user_id, "courseid": 2} for user_id in (2, 3)]
    call(site, "enrol_manual_enrol_users", enrolments=enrolments)
    admin, ada = call(site, "core_enrol_get_enrolled_users", courseid=2)
    assert list(ada) == [
        "id", "username", "firstname", "lastname", "fullname", "email", "department", "institution", "idnumber",
        "firstaccess", "lastaccess", "lastcourseaccess", "description", "descriptionformat", "city", "country",
        "profileimageurlsmall", "profileimageurl", "roles", "enrolledcourses",
    ]  # fmt: skip
    assert (ada["institution"], ada["city"], ada["country"], ada["description"]) == (
        "Analytical Society",
        "London",
        "GB",
        "Hi",
    )
    assert admin["preferences"] == [{"name": "_lastloaded", "value": NOW}]
    assert list(admin)[-3:] == ["roles", "preferences", "enrolledcourses"]
