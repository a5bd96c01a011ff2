"""The Moodle web-service sandbox against PHP's form parsing, Moodle's parameter validation and a real Moodle 5.0.

The expected bodies below are the raw answers of a real Moodle 5.0 (Build 20250414), read from
``tests/moodle_golden/``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter

import pytest
import requests

from moodle_sandbox.errors import MoodleException
from moodle_sandbox.params import DEFAULT, OPTIONAL, Multiple, Single, Value, validate
from moodle_sandbox.phpform import PhpArray, parse_php_form
from moodle_sandbox.server import SandboxServer, start_sandbox
from moodle_sandbox.site import SandboxSite
from tests.moodle_sandbox.test_golden import golden_json, golden_text

TOKEN = "sandbox-test-token-0123456789abcdef"
SITE_INFO = "core_webservice_get_site_info"
REST_PATH = "/webservice/rest/server.php"

# Byte-exact bodies of the real Moodle 5.0, production mode (debugging off).
GOLDEN_BAD_TOKEN = golden_text("error_bad_token.json")
GOLDEN_NOT_IN_SERVICE = golden_text("error_function_not_in_service.json")
GOLDEN_UNKNOWN_FUNCTION = golden_text("mod_resource_add_resource.json")
GOLDEN_INVALID_PARAMETER = golden_text("error_missing_wsfunction.json")
GOLDEN_DEBUG_UNKNOWN_FUNCTION = golden_json("debug_mode/mod_resource_add_resource.json")
# debuginfo of debug_mode/error_invalid_parameter_type.json (message_popup_get_popup_notifications, useridto=abc)
GOLDEN_DEBUG_BAD_USERIDTO = golden_json("debug_mode/error_invalid_parameter_type.json")["debuginfo"]
# debuginfo of debug_mode/error_missing_parameter_create_course.json (courses[0] without shortname)
GOLDEN_DEBUG_MISSING_SHORTNAME = golden_json("debug_mode/error_missing_parameter_create_course.json")["debuginfo"]
GOLDEN_DEBUG_NOT_IN_SERVICE = golden_json("debug_mode/error_function_not_in_service.json")["debuginfo"]
# Top-level keys of core_webservice_get_site_info.json, in order, and the JSON type of each value.
GOLDEN_SITE_INFO = golden_json("core_webservice_get_site_info.json")
GOLDEN_SITE_INFO_TYPES = {key: type(value) for key, value in GOLDEN_SITE_INFO.items()}
GOLDEN_VERSION = "2025041400"
GOLDEN_RELEASE = "5.0 (Build: 20250414)"

# Local copies of real Moodle parameter descriptions, so these tests do not depend on which functions site.py has.
POPUP_NOTIFICATIONS = Single(
    {
        "useridto": Value("int"),
        "newestfirst": Value("bool", DEFAULT, True),
        "limit": Value("int", DEFAULT, 0),
        "offset": Value("int", DEFAULT, 0),
    }
)
USERS_BY_FIELD = Single({"field": Value("text"), "values": Multiple(Value("text"))})
CREATE_COURSES = Single(
    {
        "courses": Multiple(
            Single(
                {
                    "fullname": Value("text"),
                    "shortname": Value("text"),
                    "categoryid": Value("int"),
                    "idnumber": Value("text", OPTIONAL),
                    "summaryformat": Value("int", DEFAULT, 1),
                }
            )
        )
    }
)


def form(*pairs: tuple[str, str], max_input_vars: int = 5000) -> PhpArray:
    parsed, dropped = parse_php_form(list(pairs), max_input_vars)
    assert dropped == 0
    return parsed


def validation_error(description, value) -> MoodleException:
    with pytest.raises(MoodleException) as caught:
        validate(description, value)
    error = caught.value
    assert (error.exception, error.errorcode) == ("core\\exception\\invalid_parameter_exception", "invalidparameter")
    return error


def rest_error(site: SandboxSite, variables: dict) -> dict:
    with pytest.raises(MoodleException) as caught:
        site.rest(variables)
    return site.error_body(caught.value)


def compact(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"))


# --- parse_php_form: PHP's $_POST -------------------------------------------------------------------------------


def test_flat_keys_keep_their_string_values_and_order():
    assert form(("wstoken", "t"), ("wsfunction", "f"), ("empty", "")) == {
        "wstoken": "t",
        "wsfunction": "f",
        "empty": "",
    }
    assert list(form(("b", "1"), ("a", "2"))) == ["b", "a"]


def test_brackets_build_nested_arrays():
    parsed = form(
        ("courses[0][fullname]", "Python"),
        ("courses[0][customfields][0][shortname]", "level"),
        ("courses[1][fullname]", "Go"),
        ("options[ids][0]", "2"),
    )
    assert parsed == {
        "courses": {
            "0": {"fullname": "Python", "customfields": {"0": {"shortname": "level"}}},
            "1": {"fullname": "Go"},
        },
        "options": {"ids": {"0": "2"}},
    }
    assert isinstance(parsed["courses"], PhpArray)
    assert isinstance(parsed["courses"]["0"], PhpArray)


def test_empty_brackets_append_the_next_integer_key():
    assert form(("a[]", "x"), ("a[]", "y"), ("a[]", "z")) == {"a": {"0": "x", "1": "y", "2": "z"}}
    assert form(("a[5]", "x"), ("a[]", "y")) == {"a": {"5": "x", "6": "y"}}
    assert form(("a[name]", "x"), ("a[]", "y")) == {"a": {"name": "x", "0": "y"}}
    assert form(("a[][b]", "x"), ("a[][b]", "y")) == {"a": {"0": {"b": "x"}, "1": {"b": "y"}}}


def test_a_later_duplicate_wins_and_keeps_the_first_position():
    parsed = form(("a", "1"), ("b", "2"), ("a", "3"))
    assert parsed == {"a": "3", "b": "2"}
    assert list(parsed) == ["a", "b"]
    assert form(("c[0][x]", "old"), ("c[0][x]", "new")) == {"c": {"0": {"x": "new"}}}


def test_a_scalar_and_an_array_under_one_name_replace_each_other_like_php():
    assert form(("a", "x"), ("a[b]", "y")) == {"a": {"b": "y"}}
    assert form(("a[b]", "y"), ("a", "x")) == {"a": "x"}


def test_max_input_vars_keeps_the_first_pairs_and_reports_how_many_were_dropped():
    pairs = [("a", "1"), ("b[]", "2"), ("b[]", "3"), ("c", "4"), ("d", "5")]
    assert parse_php_form(pairs, 3) == ({"a": "1", "b": {"0": "2", "1": "3"}}, 2)
    assert parse_php_form(pairs, 5) == ({"a": "1", "b": {"0": "2", "1": "3"}, "c": "4", "d": "5"}, 0)
    assert parse_php_form(pairs, 100)[1] == 0


def test_dots_and_spaces_in_the_top_level_name_become_underscores_like_php():
    assert form(("a.b c", "1")) == {"a_b_c": "1"}
    # Only the variable name is mangled, never the bracketed keys.
    assert form(("my.var[x.y z]", "1")) == {"my_var": {"x.y z": "1"}}


def test_an_unterminated_bracket_becomes_an_underscore_like_php_8():
    assert form(("a[b", "1")) == {"a_b": "1"}


def test_an_empty_name_is_dropped():
    assert form(("", "x")) == {}


def test_nesting_deeper_than_php_max_input_nesting_level_is_dropped():
    deep_ok = "a" + "[k]" * 64
    too_deep = "b" + "[k]" * 65
    parsed = form((deep_ok, "kept"), (too_deep, "dropped"))
    assert "b" not in parsed
    node = parsed["a"]
    for _ in range(63):
        node = node["k"]
    assert node == {"k": "kept"}


def test_php_drops_a_name_that_starts_with_a_bracket():
    assert form(("[a]", "x")) == {}


def test_php_ignores_leading_spaces_in_a_name():
    assert form((" a", "x")) == {"a": "x"}


def test_php_ignores_text_after_the_closing_bracket():
    assert form(("a[b]c", "x")) == {"a": {"b": "x"}}


def test_php_only_counts_canonical_integer_keys_for_append():
    assert form(("a[01]", "x"), ("a[]", "y")) == {"a": {"01": "x", "0": "y"}}


def test_a_non_ascii_digit_key_followed_by_an_append_does_not_crash():
    assert form(("a[²]", "x"), ("a[]", "y")) == {"a": {"²": "x", "0": "y"}}


# --- validate(): external_api::validate_parameters() ---------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("42", 42), ("-3", -3)])
def test_int_accepts_plain_integers(raw, expected):
    assert validate(Value("int"), raw) == expected
    assert type(validate(Value("int"), raw)) is int


@pytest.mark.parametrize("raw", ["abc", "", "1.5", " 3", "3 ", "+3", "0x10", "1e3"])
def test_int_refuses_anything_else_with_moodles_debuginfo(raw):
    error = validation_error(Value("int"), raw)
    assert error.message == "Invalid parameter value detected"
    assert (
        error.debuginfo == f'Invalid external api parameter: the value is "{raw}", the server was expecting "int" type'
    )


@pytest.mark.parametrize(("raw", "expected"), [("0", False), ("1", True)])
def test_bool_accepts_only_0_and_1(raw, expected):
    assert validate(Value("bool"), raw) is expected


@pytest.mark.parametrize("raw", ["true", "false", "yes", "no", "on", "", "2", "True"])
def test_bool_refuses_words_like_moodle(raw):
    error = validation_error(Value("bool"), raw)
    assert error.debuginfo == (
        f'Invalid external api parameter: the value is "{raw}", the server was expecting "bool" type'
    )


def test_alphanumext_refuses_characters_outside_a_z_0_9_underscore_dash():
    assert validate(Value("alphanumext"), "mobile_app-2") == "mobile_app-2"
    assert validation_error(Value("alphanumext"), "a b").debuginfo == (
        'Invalid external api parameter: the value is "a b", the server was expecting "alphanumext" type'
    )


def test_missing_required_key_is_reported_by_name():
    error = validation_error(USERS_BY_FIELD, form(("field", "email")))
    assert error.debuginfo == "Missing required key in single structure: values"
    assert error.body(debug=False) == json.loads(GOLDEN_INVALID_PARAMETER)
    # debug_mode/error_missing_parameter.json
    assert error.body(debug=True) == {
        "exception": "core\\exception\\invalid_parameter_exception",
        "errorcode": "invalidparameter",
        "message": "Invalid parameter value detected (Missing required key in single structure: values)",
        "debuginfo": "Missing required key in single structure: values",
    }


def test_unexpected_keys_are_listed_in_the_order_sent():
    error = validation_error(Single({"keep": Value("text")}), form(("keep", "x"), ("a", "1"), ("b", "2")))
    assert error.debuginfo == "Unexpected keys (a, b) detected in parameter array."


@pytest.mark.parametrize(
    ("description", "raw"),
    [(USERS_BY_FIELD, ""), (Multiple(Value("int")), "5"), (Single({"a": Value("int")}), "x")],
)
def test_a_string_where_an_array_is_expected_is_refused(description, raw):
    error = validation_error(description, raw)
    assert error.debuginfo == f"Only arrays accepted. The bad value is: '{raw}'"


def test_a_string_for_a_list_parameter_names_the_key():
    error = validation_error(USERS_BY_FIELD, form(("field", "email"), ("values", "")))
    assert error.debuginfo == (
        "values => Invalid parameter value detected (Only arrays accepted. The bad value is: ''): "
        "Only arrays accepted. The bad value is: ''"
    )


def test_multiple_ignores_the_sent_indexes_and_renumbers_in_order():
    params = form(("field", "id"), ("values[7]", "b"), ("values[2]", "a"), ("values[]", "c"))
    assert validate(USERS_BY_FIELD, params) == {"field": "id", "values": ["b", "a", "c"]}
    assert validate(Multiple(Value("int")), {"10": "1", "3": "2"}) == [1, 2]


def test_default_keys_are_filled_and_optional_keys_left_out():
    assert validate(POPUP_NOTIFICATIONS, form(("useridto", "2"))) == {
        "useridto": 2,
        "newestfirst": True,
        "limit": 0,
        "offset": 0,
    }
    assert validate(POPUP_NOTIFICATIONS, form(("useridto", "2"), ("newestfirst", "0"), ("limit", "5"))) == {
        "useridto": 2,
        "newestfirst": False,
        "limit": 5,
        "offset": 0,
    }
    courses = validate(
        CREATE_COURSES,
        form(("courses[0][fullname]", "F"), ("courses[0][shortname]", "S"), ("courses[0][categoryid]", "1")),
    )
    assert courses == {"courses": [{"fullname": "F", "shortname": "S", "categoryid": 1, "summaryformat": 1}]}
    assert validate(Single({"list": Multiple(Value("int"), presence=DEFAULT)}), {}) == {"list": []}


def test_a_nested_error_is_prefixed_with_the_key_like_moodle():
    error = validation_error(POPUP_NOTIFICATIONS, form(("useridto", "abc")))
    assert error.debuginfo == GOLDEN_DEBUG_BAD_USERIDTO
    assert error.body(debug=False) == json.loads(GOLDEN_INVALID_PARAMETER)
    assert error.body(debug=True) == {
        "exception": "core\\exception\\invalid_parameter_exception",
        "errorcode": "invalidparameter",
        "message": f"Invalid parameter value detected ({GOLDEN_DEBUG_BAD_USERIDTO})",
        "debuginfo": GOLDEN_DEBUG_BAD_USERIDTO,
    }


def test_a_list_adds_no_prefix_of_its_own_like_moodle():
    error = validation_error(CREATE_COURSES, form(("courses[0][fullname]", "NoShort"), ("courses[0][categoryid]", "1")))
    assert error.debuginfo == GOLDEN_DEBUG_MISSING_SHORTNAME


def test_errors_two_structures_deep_nest_their_prefixes():
    description = Single({"outer": Single({"inner": Value("int")})})
    error = validation_error(description, form(("outer[inner]", "x")))
    inner = 'Invalid external api parameter: the value is "x", the server was expecting "int" type'
    middle = f"inner => Invalid parameter value detected ({inner}): {inner}"
    assert error.debuginfo == f"outer => Invalid parameter value detected ({middle}): {middle}"


def test_an_array_where_a_scalar_is_expected_has_moodles_debuginfo():
    error = validation_error(Value("int"), {"0": "1"})
    assert error.debuginfo == "Scalar type expected, array or object received."


def test_a_missing_key_is_reported_before_unexpected_keys():
    error = validation_error(USERS_BY_FIELD, form(("field", "email"), ("value", "typo")))
    assert error.debuginfo == "Missing required key in single structure: values"


@pytest.mark.parametrize("raw", ["007", "-0", "\u0663", "9223372036854775808"])
def test_int_refuses_what_php_would_not_round_trip(raw):
    validation_error(Value("int"), raw)


# --- SandboxSite.rest(): the REST server's checks -------------------------------------------------------------------


@pytest.fixture
def site():
    return SandboxSite(TOKEN, base_url="http://moodle.test", service_functions=[SITE_INFO])


@pytest.fixture
def debug_site():
    return SandboxSite(TOKEN, base_url="http://moodle.test", service_functions=[SITE_INFO], debug=True)


@pytest.mark.parametrize(
    "variables",
    [
        {"wsfunction": SITE_INFO},
        {"wstoken": "", "wsfunction": SITE_INFO},
        {"wstoken": "wrong", "wsfunction": SITE_INFO},
        {"wstoken": TOKEN.upper(), "wsfunction": SITE_INFO},
        {"wstoken": "wrong", "wsfunction": ""},
        {"wstoken": "wrong", "wsfunction": "mod_resource_add_resource"},
        {"token": TOKEN, "wsfunction": SITE_INFO},
    ],
)
def test_a_bad_or_missing_token_is_invalidtoken_before_anything_else(site, debug_site, variables):
    assert compact(rest_error(site, variables)) == GOLDEN_BAD_TOKEN
    # debug_mode/error_bad_token.json is the same body: invalidtoken has no debuginfo.
    assert compact(rest_error(debug_site, variables)) == GOLDEN_BAD_TOKEN


@pytest.mark.parametrize("variables", [{"wstoken": TOKEN, "wsfunction": ""}, {"wstoken": TOKEN}])
def test_an_empty_or_missing_wsfunction_is_invalidparameter(site, debug_site, variables):
    assert compact(rest_error(site, variables)) == GOLDEN_INVALID_PARAMETER  # error_missing_wsfunction.json
    assert rest_error(debug_site, variables) == {
        "exception": "core\\exception\\invalid_parameter_exception",
        "errorcode": "invalidparameter",
        "message": "Invalid parameter value detected (Missing function name)",
        "debuginfo": "Missing function name",
    }


def test_an_unknown_function_is_invalidrecordunknown_even_with_junk_params(site):
    variables = {"wstoken": TOKEN, "wsfunction": "mod_resource_add_resource", "courseid": "2", "name": "x"}
    assert compact(rest_error(site, variables)) == GOLDEN_UNKNOWN_FUNCTION  # mod_resource_add_resource.json
    assert "external_functions" not in json.dumps(rest_error(site, variables))


def test_an_unknown_function_in_debug_mode_is_invalidrecord_naming_external_functions(debug_site):
    variables = {"wstoken": TOKEN, "wsfunction": "mod_resource_add_resource", "courseid": "2", "name": "x"}
    body = rest_error(debug_site, variables)
    assert body["errorcode"] == "invalidrecord"
    assert "external_functions" in body["debuginfo"]
    assert body == GOLDEN_DEBUG_UNKNOWN_FUNCTION  # debug_mode/mod_resource_add_resource.json


def test_a_function_outside_the_service_is_accessexception_before_param_checks():
    site = SandboxSite(TOKEN, service_functions=[])
    body = rest_error(site, {"wstoken": TOKEN, "wsfunction": SITE_INFO, "bogus": "1"})
    assert compact(body) == GOLDEN_NOT_IN_SERVICE  # error_function_not_in_service.json


def test_a_function_outside_the_service_names_the_function_in_debug_mode():
    site = SandboxSite(TOKEN, service_functions=[], debug=True)
    body = rest_error(site, {"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert (body["exception"], body["errorcode"]) == ("webservice_access_exception", "accessexception")
    assert body["debuginfo"].startswith(f"Access to the function {SITE_INFO}() is not allowed.")
    assert body["message"] == f"Access control exception ({body['debuginfo']})"


def test_a_function_outside_the_service_has_moodles_full_debuginfo():
    site = SandboxSite(TOKEN, service_functions=[], debug=True)
    body = rest_error(site, {"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert body["debuginfo"] == GOLDEN_DEBUG_NOT_IN_SERVICE.replace("core_course_get_courses", SITE_INFO)


@pytest.mark.parametrize(
    ("extra", "debuginfo"),
    [
        ({"courseid": "2"}, "Unexpected keys (courseid) detected in parameter array."),
        ({"a": "1", "b": "2"}, "Unexpected keys (a, b) detected in parameter array."),
        ({"serviceshortnames": "x"}, "serviceshortnames => Invalid parameter value detected"),
        ({"serviceshortnames": PhpArray({"0": "bad name"})}, "serviceshortnames => Invalid parameter value detected"),
    ],
)
def test_unexpected_or_bad_params_for_site_info_are_invalidparameter(site, debug_site, extra, debuginfo):
    variables = {"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json", **extra}
    assert compact(rest_error(site, variables)) == GOLDEN_INVALID_PARAMETER
    assert rest_error(debug_site, variables)["debuginfo"].startswith(debuginfo)


def test_reserved_params_are_not_passed_to_the_function(site):
    info = site.rest(PhpArray({"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json"}))
    assert info["username"] == "admin"
    assert site.rest({"wstoken": TOKEN, "wsfunction": SITE_INFO, "serviceshortnames": {"5": "moodle_mobile_app"}})


def test_rest_does_not_modify_the_callers_form(site):
    variables = PhpArray({"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json"})
    site.rest(variables)
    assert variables == {"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json"}


def test_moodlewssetting_params_are_not_passed_to_the_function(site):
    variables = {"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewssettingfilter": "1", "moodlewssettinglang": "en"}
    assert site.rest(variables)["username"] == "admin"


def test_an_array_wsfunction_is_a_moodle_error_not_a_crash(site):
    rest_error(site, {"wstoken": TOKEN, "wsfunction": PhpArray({"0": SITE_INFO})})


def test_site_info_has_the_same_top_level_keys_and_types_as_real_moodle(site):
    info = site.rest({"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert set(info) == set(GOLDEN_SITE_INFO_TYPES)
    for key, expected in GOLDEN_SITE_INFO_TYPES.items():
        assert type(info[key]) is expected, key
    assert (info["release"], info["version"]) == (GOLDEN_RELEASE, GOLDEN_VERSION)
    assert info["siteurl"] == "http://moodle.test"
    assert info["userpictureurl"].startswith("http://moodle.test/")
    for feature in info["advancedfeatures"]:
        assert set(feature) == {"name", "value"}
        assert type(feature["value"]) is int
    assert json.loads(json.dumps(info)) == info  # plain JSON, nothing Python-only


def test_site_info_functions_are_the_service_functions_with_version_strings():
    functions = [SITE_INFO, "core_course_get_courses", "enrol_manual_enrol_users"]
    site = SandboxSite(TOKEN, service_functions=functions)
    info = site.rest({"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert info["functions"] == [{"name": name, "version": GOLDEN_VERSION} for name in functions]


def test_site_info_userid_is_an_int_and_the_private_access_key_is_there_like_moodle(site):
    info = site.rest({"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert type(info["userid"]) is int
    assert info["userid"] == 2  # the admin, as on the recorded site
    assert re.fullmatch(r"[0-9a-f]{32}", info["userprivateaccesskey"])
    assert (
        site.rest({"wstoken": TOKEN, "wsfunction": SITE_INFO})["userprivateaccesskey"] == info["userprivateaccesskey"]
    )
    other = SandboxSite(TOKEN, service_functions=[SITE_INFO]).rest({"wstoken": TOKEN, "wsfunction": SITE_INFO})
    assert other["userprivateaccesskey"] != info["userprivateaccesskey"]


# --- The HTTP server --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_pool():
    """Sandboxes shared by this module's tests, one per set of options, stopped together at the end."""
    servers: dict[str, SandboxServer] = {}
    yield servers
    stoppers = [threading.Thread(target=server.stop) for server in servers.values()]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


@pytest.fixture
def make_server(server_pool):
    """A running sandbox with ``options``, its faults cleared; ``fresh=True`` gives one no other test has used."""

    def make(fresh: bool = False, **options) -> SandboxServer:
        options.setdefault("service_functions", [SITE_INFO])
        key = json.dumps(options, sort_keys=True) + (f"#{len(server_pool)}" if fresh else "")
        if key not in server_pool:
            server_pool[key] = start_sandbox(token=TOKEN, **options)
        server = server_pool[key]
        assert control(server, "DELETE", "faults").status_code == 200
        return server

    return make


@pytest.fixture
def server(make_server) -> SandboxServer:
    return make_server()


def rest_url(server) -> str:
    return f"{server.url}{REST_PATH}"


def call(server, function: str = SITE_INFO, token: str = TOKEN, timeout: float = 5, **extra) -> requests.Response:
    data = {"wstoken": token, "wsfunction": function, "moodlewsrestformat": "json", **extra}
    return requests.post(rest_url(server), data=data, timeout=timeout)


def control(server, method: str, action: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = {} if token is None else {"X-Sandbox-Token": token}
    return requests.request(method, f"{server.url}/__sandbox__/{action}", headers=headers, timeout=5, **kwargs)


def queue_fault(server, **fault) -> dict:
    response = control(server, "POST", "faults", json=fault)
    assert response.status_code == 201, response.text
    return response.json()


def assert_site_info(response: requests.Response) -> dict:
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["username"] == "admin", body
    return body


def test_a_rest_call_is_a_200_json_answer(server):
    response = call(server)
    body = assert_site_info(response)
    assert body["siteurl"] == server.url
    assert body["functions"] == [{"name": SITE_INFO, "version": GOLDEN_VERSION}]
    assert int(response.headers["Content-Length"]) == len(response.content)


def test_a_rest_call_by_get_works_like_moodle(server):
    params = {"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json"}
    assert_site_info(requests.get(rest_url(server), params=params, timeout=5))


@pytest.mark.parametrize(
    ("options", "data", "golden"),
    [
        ({}, {"wstoken": "wrong", "wsfunction": SITE_INFO}, GOLDEN_BAD_TOKEN),
        ({}, {"wstoken": TOKEN, "wsfunction": ""}, GOLDEN_INVALID_PARAMETER),
        ({}, {"wstoken": TOKEN, "wsfunction": "mod_resource_add_resource", "courseid": "2"}, GOLDEN_UNKNOWN_FUNCTION),
        ({"service_functions": []}, {"wstoken": TOKEN, "wsfunction": SITE_INFO}, GOLDEN_NOT_IN_SERVICE),
    ],
)
def test_an_error_is_still_http_200_with_moodles_exact_body(make_server, options, data, golden):
    server = make_server(**options)
    response = requests.post(rest_url(server), data={**data, "moodlewsrestformat": "json"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == golden.encode()


def test_a_json_body_is_not_read_so_the_token_is_missing(server):
    response = requests.post(rest_url(server), json={"wstoken": TOKEN, "wsfunction": SITE_INFO}, timeout=5)
    assert response.content == GOLDEN_BAD_TOKEN.encode()


def test_query_string_params_are_merged_with_post_params(server):
    response = requests.post(
        rest_url(server),
        params={"wsfunction": SITE_INFO, "moodlewsrestformat": "json"},
        data={"wstoken": TOKEN},
        timeout=5,
    )
    assert_site_info(response)


def test_post_wins_over_the_query_string(server):
    right_in_post = requests.post(rest_url(server), params={"wstoken": "wrong"}, data=_site_info_form(), timeout=5)
    assert_site_info(right_in_post)
    wrong_in_post = requests.post(
        rest_url(server), params={"wstoken": TOKEN}, data={**_site_info_form(), "wstoken": "wrong"}, timeout=5
    )
    assert wrong_in_post.content == GOLDEN_BAD_TOKEN.encode()


def _site_info_form() -> dict:
    return {"wstoken": TOKEN, "wsfunction": SITE_INFO, "moodlewsrestformat": "json"}


def test_max_input_vars_drops_a_token_sent_past_the_limit(make_server):
    server = make_server(max_input_vars=5)
    fields = [
        ("wsfunction", SITE_INFO),
        ("moodlewsrestformat", "json"),
        ("serviceshortnames[0]", "a"),
        ("serviceshortnames[1]", "b"),
        ("serviceshortnames[2]", "c"),
    ]
    dropped = requests.post(rest_url(server), data=[*fields, ("wstoken", TOKEN)], timeout=5)
    assert dropped.content == GOLDEN_BAD_TOKEN.encode()
    kept = requests.post(rest_url(server), data=[("wstoken", TOKEN), *fields[:4]], timeout=5)
    assert_site_info(kept)


def test_max_input_vars_drops_an_unexpected_param_sent_past_the_limit(make_server):
    server = make_server(max_input_vars=3)
    fields = [("wstoken", TOKEN), ("wsfunction", SITE_INFO), ("moodlewsrestformat", "json"), ("bogus", "1")]
    assert_site_info(requests.post(rest_url(server), data=fields, timeout=5))
    unlimited = requests.post(rest_url(make_server()), data=fields, timeout=5)
    assert unlimited.content == GOLDEN_INVALID_PARAMETER.encode()


def test_max_input_vars_counts_the_query_string_and_the_body_separately(make_server):
    server = make_server(max_input_vars=2)
    response = requests.post(
        rest_url(server),
        params={"wsfunction": SITE_INFO, "moodlewsrestformat": "json"},
        data=[("wstoken", TOKEN), ("serviceshortnames[0]", "a"), ("bogus", "1")],
        timeout=5,
    )
    assert_site_info(response)


def test_max_input_vars_also_limits_the_query_string(make_server):
    server = make_server(max_input_vars=2)
    query = [("wsfunction", SITE_INFO), ("moodlewsrestformat", "json"), ("wstoken", TOKEN)]
    response = requests.get(rest_url(server), params=query, timeout=5)
    assert response.content == GOLDEN_BAD_TOKEN.encode()
    token_first = [("wstoken", TOKEN), ("wsfunction", SITE_INFO), ("moodlewsrestformat", "json")]
    assert_site_info(requests.get(rest_url(server), params=token_first, timeout=5))


def test_latency_ms_delays_every_answer(make_server):
    server = make_server(latency_ms=150)
    started = time.monotonic()
    assert_site_info(call(server))
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    ("method", "action", "kwargs"),
    [
        ("POST", "faults", {"json": {"kind": "reset"}}),
        ("DELETE", "faults", {}),
        ("GET", "calls", {}),
        ("GET", "in-flight", {}),
        ("DELETE", "in-flight", {}),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_control_endpoints_need_the_sandbox_token(server, method, action, kwargs, token):
    response = control(server, method, action, token=token, **kwargs)
    assert response.status_code == 403
    assert call(server).status_code == 200  # and nothing was queued


def test_control_endpoints_do_not_accept_the_token_as_a_param(server):
    response = requests.get(f"{server.url}/__sandbox__/calls", params={"X-Sandbox-Token": TOKEN}, timeout=5)
    assert response.status_code == 403


def test_a_queued_fault_is_echoed_with_its_defaults(server):
    assert queue_fault(server, kind="http") == {
        "queued": {"kind": "http", "times": 1, "function": None, "status": 500, "seconds": 30.0}
    }


def test_fault_reset_drops_the_connection_once(server):
    queue_fault(server, kind="reset")
    with pytest.raises(requests.ConnectionError):
        call(server)
    assert_site_info(call(server))


def test_fault_delay_holds_the_answer(server):
    queue_fault(server, kind="delay", seconds=1.0)
    with pytest.raises(requests.ReadTimeout):
        call(server, timeout=0.1)


def test_fault_delay_then_answers_normally(server):
    queue_fault(server, kind="delay", seconds=0.2)
    started = time.monotonic()
    assert_site_info(call(server))
    assert time.monotonic() - started >= 0.15


def test_fault_http_503_is_an_html_page_with_retry_after(server):
    queue_fault(server, kind="http", status=503)
    response = call(server)
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "text/html"
    assert response.headers["Retry-After"] == "300"
    assert response.text.startswith("<html>")
    with pytest.raises(ValueError):
        response.json()
    assert_site_info(call(server))


def test_fault_http_502_is_an_html_page_without_retry_after(server):
    queue_fault(server, kind="http", status=502)
    response = call(server)
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert "Retry-After" not in response.headers
    assert "<html>" in response.text


def test_fault_maintenance_is_moodles_sitemaintenance_error_in_a_200(server):
    queue_fault(server, kind="maintenance")
    response = call(server)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": "sitemaintenance",
        "message": "The site is undergoing maintenance and is currently not available",
    }


def test_fault_notjson_is_an_html_page_with_200(server):
    queue_fault(server, kind="notjson")
    response = call(server)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html"
    with pytest.raises(ValueError):
        response.json()


def test_fault_times_counts_down(server):
    queue_fault(server, kind="http", status=503, times=2)
    assert [call(server).status_code for _ in range(3)] == [503, 503, 200]


def test_faults_are_used_in_the_order_queued(server):
    queue_fault(server, kind="http", status=502)
    queue_fault(server, kind="notjson")
    first, second, third = (call(server) for _ in range(3))
    assert first.status_code == 502
    assert (second.status_code, second.headers["Content-Type"]) == (200, "text/html")
    assert_site_info(third)


def test_fault_function_only_hits_that_function(server):
    queue_fault(server, kind="http", status=503, function="core_course_get_courses")
    assert_site_info(call(server))
    assert call(server, function="core_course_get_courses").status_code == 503
    assert call(server, function="core_course_get_courses").status_code == 200  # consumed


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "explode"},
        {},
        {"kind": "http", "times": 0},
        {"kind": "reset", "unknown": 1},
        ["reset"],
    ],
)
def test_an_invalid_fault_is_a_400_and_queues_nothing(server, body):
    response = control(server, "POST", "faults", json=body)
    assert response.status_code == 400
    assert "error" in response.json()
    assert_site_info(call(server))


def test_a_fault_body_that_is_not_json_is_a_400(server):
    response = control(server, "POST", "faults", data=b"kind=reset")
    assert response.status_code == 400


def test_delete_faults_clears_the_queue(server):
    queue_fault(server, kind="reset", times=5)
    queue_fault(server, kind="http", status=503)
    response = control(server, "DELETE", "faults")
    assert (response.status_code, response.json()) == (200, {"cleared": True})
    assert_site_info(call(server))


def sandbox_calls(server) -> dict:
    response = control(server, "GET", "calls")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == sum(body["calls"].values())
    return body


def test_a_new_sandbox_has_counted_no_calls(make_server):
    assert sandbox_calls(make_server(fresh=True)) == {"calls": {}, "total": 0}


def test_calls_counts_calls_per_function(server):
    before = sandbox_calls(server)
    call(server)
    call(server)
    call(server, function="mod_resource_add_resource")
    after = sandbox_calls(server)
    assert Counter(after["calls"]) - Counter(before["calls"]) == {SITE_INFO: 2, "mod_resource_add_resource": 1}
    assert after["total"] - before["total"] == 3


def test_calls_counts_faulted_calls_too(server):
    before = sandbox_calls(server)
    queue_fault(server, kind="http", status=503, function="faulted_function")
    assert call(server, function="faulted_function").status_code == 503
    assert sandbox_calls(server)["calls"]["faulted_function"] == before["calls"].get("faulted_function", 0) + 1


def in_flight(server) -> dict:
    response = control(server, "GET", "in-flight")
    assert response.status_code == 200
    return response.json()


def wait_for_in_flight(server, count: int) -> None:
    deadline = time.monotonic() + 5
    while in_flight(server)["in_flight"] != count:
        assert time.monotonic() < deadline, f"never {count} calls in flight: {in_flight(server)}"
        time.sleep(0.01)


def in_the_background(server, delay_s: float, count: int = 1) -> list[threading.Thread]:
    """``count`` calls each answered after ``delay_s``, made from threads; answers once they are all in flight."""
    queue_fault(server, kind="delay", seconds=delay_s, times=count)
    callers = [threading.Thread(target=call, args=(server,)) for _ in range(count)]
    for caller in callers:
        caller.start()
    wait_for_in_flight(server, count)
    return callers


# How long a call is held in flight while the test looks at it: ample for a few control requests on a loaded host.
HELD_S = 1.5


def test_a_new_sandbox_has_had_no_call_in_flight(make_server):
    assert in_flight(make_server(fresh=True)) == {"in_flight": 0, "max_in_flight": 0}


def test_in_flight_counts_the_calls_being_answered_and_keeps_the_most_at_once(make_server):
    server = make_server(fresh=True)
    callers = in_the_background(server, HELD_S, count=3)
    assert control(server, "GET", "calls").status_code == 200  # control requests are not calls
    assert in_flight(server) == {"in_flight": 3, "max_in_flight": 3}
    for caller in callers:
        caller.join()
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 3}
    assert_site_info(call(server))
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 3}


def test_delete_in_flight_starts_the_maximum_again_from_the_calls_in_flight_now(make_server):
    server = make_server(fresh=True)
    for caller in in_the_background(server, HELD_S, count=2):
        caller.join()
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 2}
    [caller] = in_the_background(server, HELD_S)
    response = control(server, "DELETE", "in-flight")
    assert (response.status_code, response.json()) == (200, {"in_flight": 1, "max_in_flight": 1})
    caller.join()
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 1}
    assert control(server, "DELETE", "in-flight").json() == {"in_flight": 0, "max_in_flight": 0}


@pytest.mark.parametrize("fault", [None, {"kind": "http", "status": 503}, {"kind": "maintenance"}, {"kind": "notjson"}])
def test_a_call_is_out_of_flight_before_its_caller_has_the_answer(make_server, fault):
    server = make_server(fresh=True)
    if fault is not None:
        queue_fault(server, **fault)
    call(server)
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 1}


@pytest.mark.parametrize(("fault", "timeout"), [({"kind": "reset"}, 5), ({"kind": "delay", "seconds": HELD_S}, 0.1)])
def test_a_dropped_or_abandoned_call_leaves_flight_too(make_server, fault, timeout):
    server = make_server(fresh=True)
    queue_fault(server, **fault)
    with pytest.raises(requests.RequestException):  # the connection reset, or a caller that gave up waiting
        call(server, timeout=timeout)
    wait_for_in_flight(server, 0)
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 1}


def test_uploads_are_counted_in_flight_too(make_server):
    server = make_server(fresh=True)
    queue_fault(server, kind="delay", seconds=HELD_S, function="upload.php")
    files = {"file_1": ("hello.py", b"print('hello')")}
    uploader = threading.Thread(
        target=requests.post,
        args=(f"{server.url}/webservice/upload.php",),
        kwargs={"data": {"token": TOKEN}, "files": files, "timeout": 5},
    )
    uploader.start()
    wait_for_in_flight(server, 1)
    assert_site_info(call(server))
    assert in_flight(server) == {"in_flight": 1, "max_in_flight": 2}
    uploader.join()
    assert in_flight(server) == {"in_flight": 0, "max_in_flight": 2}


def _connection_pools(session: requests.Session, url: str) -> list:
    pools = session.get_adapter(url).poolmanager.pools
    return [pools[key] for key in pools.keys()]  # noqa: SIM118 - the container refuses plain iteration


def _pooled_sockets(session: requests.Session, url: str) -> list:
    pools = _connection_pools(session, url)
    return [connection.sock for pool in pools for connection in pool.pool.queue if connection is not None]


def test_keep_alive_reuses_one_connection_for_two_calls(server):
    with requests.Session() as session:
        first = session.post(rest_url(server), data=_site_info_form(), timeout=5)
        assert_site_info(first)
        assert first.raw.version == 11
        assert "close" not in first.headers.get("Connection", "").lower()
        [socket_after_first] = _pooled_sockets(session, rest_url(server))
        assert socket_after_first is not None  # still open in the pool
        assert_site_info(session.post(rest_url(server), data=_site_info_form(), timeout=5))
        [socket_after_second] = _pooled_sockets(session, rest_url(server))
        assert socket_after_second is socket_after_first
        [pool] = _connection_pools(session, rest_url(server))
        assert pool.num_connections == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("POST", "/webservice/rest/other.php"),
        ("POST", "/webservice/rest/server.phpx"),
        ("GET", "/login/token.php"),
    ],
)
def test_unknown_paths_are_404(server, method, path):
    response = requests.request(method, f"{server.url}{path}", data=_site_info_form(), timeout=5)
    assert response.status_code == 404
    assert call(server).status_code == 200


def test_an_unknown_control_action_is_404(server):
    assert control(server, "GET", "nothing").status_code == 404
    assert control(server, "GET", "faults").status_code == 404


def test_a_body_over_the_size_limit_closes_the_connection(server):
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: sandbox\r\n\r\n"
    head = f"POST {REST_PATH} HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 99999999\r\n\r\n".encode()
    received = b""
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(head + smuggled)
        sock.settimeout(2)
        try:  # read until the sandbox closes the connection, or until it answers the smuggled request
            while b"404" not in received and (chunk := sock.recv(65536)):
                received += chunk
        except TimeoutError:
            pass
    assert received.startswith(b"HTTP/1.1 413")
    assert b"404" not in received


def test_the_recorded_answers_have_the_shapes_these_tests_rely_on():
    # Several recordings give one and the same body.
    assert golden_text("debug_mode/error_bad_token.json") == GOLDEN_BAD_TOKEN
    for name in ("error_invalid_parameter_type.json", "error_missing_parameter.json", "error_duplicate_username.json"):
        assert golden_text(name) == GOLDEN_INVALID_PARAMETER
    info = GOLDEN_SITE_INFO
    assert (info["release"], info["version"], info["userid"]) == (GOLDEN_RELEASE, GOLDEN_VERSION, 2)
    assert {function["version"] for function in info["functions"]} == {GOLDEN_VERSION}
    assert re.fullmatch(r"[0-9a-f]{32}", info["userprivateaccesskey"])
    assert GOLDEN_DEBUG_NOT_IN_SERVICE.startswith("Access to the function core_course_get_courses() is not allowed.")
