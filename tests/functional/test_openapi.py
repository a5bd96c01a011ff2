"""The OpenAPI document: served without a token, valid OpenAPI 3.1, one operation per route and method, its scopes
those the views require, its error codes those of the table."""

import re

import pytest
from marshmallow import ValidationError, fields
from openapi_spec_validator import validate
from pyramid.config import Configurator

from lms_api.errors import ErrorCode
from lms_api.openapi import DOCUMENT_PATH, PUBLIC_ROUTES, _document, build_document, described_operations
from lms_api.schemas.base import (
    Choices,
    RequestSchema,
    ResponseSchema,
    no_control_characters,
    no_html,
    not_blank,
    single_line,
    text_rules,
)
from lms_api.schemas.files import DRAFT_AREA_ONLY, NO_INTRO
from lms_api.security import Scope
from lms_api.views import ApiViews, api_routes, api_view
from tests.support.credentials import mint
from tests.support.operations import api_operations

DOCUMENTED_CODE = re.compile(r"^- `([a-z_]+)`", re.MULTILINE)


@pytest.fixture
def document(gateway):
    response = gateway.get(DOCUMENT_PATH)
    assert response.status_int == 200
    assert response.content_type == "application/json"
    return response.json


def test_the_document_is_valid_openapi_3_1_and_needs_no_token(document):
    validate(document)

    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_route_and_method_has_an_operation(gateway, document):
    served = {
        (method, gateway.router.registry.introspector.get("routes", route)["pattern"])
        for route, methods in gateway.router.registry.allowed_methods.items()
        for method in methods
        if route.startswith("api.moodle.") and route not in PUBLIC_ROUTES and method not in ("HEAD", "OPTIONS")
    }

    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == served


def test_each_operation_requires_the_scope_its_view_requires(gateway, document):
    documented = {
        (method.upper(), path): operation["security"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    required = {
        (each.method, each.pattern): [{"bearer": [each.operation.scope.value]}]
        if each.operation.credentials is None
        else [{each.operation.credentials: []}]  # a ticket or the webhook secret: no JWT, no scope to hold
        for each in api_operations(gateway.router.registry)
    }

    assert documented == required


def test_every_documented_error_code_is_in_the_table_under_its_status(document):
    table = {code.value: code.statuses for code in ErrorCode}
    for item in document["paths"].values():
        for operation in item.values():
            errors = {status: answer for status, answer in operation["responses"].items() if int(status) >= 400}
            assert {"400", "401", "403", "429", "500", "502", "503", "504"} <= set(errors)
            for status, answer in errors.items():
                codes = DOCUMENTED_CODE.findall(answer["description"])
                assert codes, f"{operation['operationId']} {status} lists no code"
                assert all(int(status) in table[code] for code in codes)


@pytest.mark.parametrize(
    ("method", "code", "statuses"),
    [("post", "invalidusers", {"400", "409"}), ("patch", "invalidusers", {"400", "409"}),
     ("patch", "usersnotupdated", {"400", "409"})],
)  # fmt: skip
def test_a_code_whose_status_depends_on_what_was_refused_is_listed_under_each(document, method, code, statuses):
    responses = document["paths"]["/api/moodle/users"][method]["responses"]

    listed = {status for status, answer in responses.items() if f"`{code}`" in answer.get("description", "")}
    assert listed == statuses


def test_inputs_and_answers_are_described_with_their_bounds(document):
    course_list = document["paths"]["/api/moodle/courses"]["get"]
    perpage = next(parameter for parameter in course_list["parameters"] if parameter["name"] == "perpage")
    assert (perpage["in"], perpage["schema"]["minimum"], perpage["schema"]["maximum"]) == ("query", 1, 200)
    assert "Cache-Status" in course_list["responses"]["200"]["headers"]
    create = document["paths"]["/api/moodle/courses"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CourseCreate"
    }
    assert "201" in create["responses"] and "Cache-Status" not in create["responses"]["201"]["headers"]
    upload = document["paths"]["/api/moodle/files/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    functions = document["components"]["schemas"]["SiteInfo"]["properties"]["functions"]
    assert functions == {"type": "array", "items": {"$ref": "#/components/schemas/Function"}}
    assert "userprivateaccesskey" not in document["components"]["schemas"]["SiteInfo"]["properties"]


def test_fields_that_are_refused_say_so_and_why(document):
    schemas = document["components"]["schemas"]

    for name in ("contextid", "component", "filearea"):
        assert schemas["UploadForm"]["properties"][name] == {"not": {}, "description": DRAFT_AREA_ONLY}
    assert schemas["AttachBody"]["properties"]["intro"] == {"not": {}, "description": NO_INTRO}


def test_course_formats_and_roles_are_the_ones_the_settings_allow(document, make_gateway):
    schemas = document["components"]["schemas"]
    for name in ("CourseCreate", "CourseUpdate"):
        assert schemas[name]["properties"]["format"] == {
            "type": "string",
            "enum": ["topics", "weeks", "social", "singleactivity"],
            "maxLength": 21,
        }
    role = schemas["Enrolment"]["properties"]["roleid"]
    assert role["oneOf"] == [
        {"type": "integer", "enum": [1, 3, 4, 5]},
        {"type": "string", "enum": ["editingteacher", "manager", "student", "teacher"]},
    ]
    assert "`admin` scope" in role["description"]

    other = make_gateway(MOODLE_COURSE_FORMATS="topics,flexsections", MOODLE_ROLE_IDS="tutor=9")
    document = other.get(DOCUMENT_PATH).json
    validate(document)
    schemas = document["components"]["schemas"]
    assert schemas["CourseCreate"]["properties"]["format"]["enum"] == ["topics", "flexsections"]
    assert schemas["Enrolment"]["properties"]["roleid"]["oneOf"][0]["enum"] == [1, 3, 4, 5, 9]


def test_moodles_codes_that_are_no_codes_are_documented_as_moodleerror(document):
    for item in document["paths"].values():
        for operation in item.values():
            assert "- `moodleerror`:" in operation["responses"]["502"]["description"]


def test_a_route_without_an_operation_stops_the_start(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.add_route("api.moodle.undescribed", "/api/moodle/undescribed")
    config.commit()

    with pytest.raises(LookupError, match=r"api\.moodle\.undescribed has no operation"):
        build_document(gateway.router.registry)


def test_a_view_without_a_docstring_stops_the_start_naming_it(gateway):
    described = described_operations(gateway.router.registry)

    def undocumented(self):
        return {}

    with pytest.raises(LookupError, match="undocumented has no docstring"):
        _document.__wrapped__((described[0]._replace(view=undocumented),), Choices(("topics",), (("student", 5),)))


class Widget(ResponseSchema):
    name = fields.String()


class WidgetQuery(RequestSchema):
    colour = fields.String()


@api_routes({"api.moodle.widgets": "/api/moodle/widgets"})
class WidgetViews(ApiViews):
    """A resource declared in one place: its routes, its operation and its schemas."""

    @api_view(
        route_name="api.moodle.widgets",
        request_method="GET",
        permission=Scope.COURSES_READ,
        query=WidgetQuery(),
        answers=Widget(),
    )
    def widgets(self):
        """The widgets of a colour."""
        return {"name": self.request.validated.query.get("colour", "plain"), "secret": "never dumped"}


def test_a_view_class_is_its_routes_its_operations_and_their_documentation(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.scan(__name__)  # WidgetViews, as the views' includeme scans lms_api.views
    config.commit()

    answer = gateway.get("/api/moodle/widgets?colour=red", mint("courses:read"))
    refused = gateway.get("/api/moodle/widgets?size=2", mint("courses:read"))
    document = build_document(gateway.router.registry)

    assert (answer.status_int, answer.json["data"]) == (200, {"name": "red"})
    assert (refused.status_int, list(refused.json["error"]["details"]["fields"])) == (400, ["size"])
    assert gateway.get("/api/moodle/widgets", mint("siteinfo:read")).status_int == 403
    validate(document)
    operation = document["paths"]["/api/moodle/widgets"]["get"]
    assert (operation["operationId"], operation["summary"]) == ("widgets", "The widgets of a colour.")
    assert [parameter["name"] for parameter in operation["parameters"]] == ["colour"]
    assert operation["security"] == [{"bearer": ["courses:read"]}]


def test_the_document_is_served_with_a_token_too(gateway):
    assert gateway.get(DOCUMENT_PATH, mint("siteinfo:read")).status_int == 200


TEXTS = ["Intro", "", " ", "a\tb", "line\nbreak", "a<b", "a < b", "<p>", "x<", "<<a", "3 < 4 <", "</", "\x00", "é ü"]


@pytest.mark.parametrize(
    "validators",
    [[single_line], [no_control_characters], [not_blank, single_line, no_html], [no_html], [not_blank]],
    ids=["single-line", "multi-line", "name", "no-html", "not-blank"],
)
def test_the_documented_text_patterns_accept_what_the_rules_accept(validators):
    rules = text_rules(validators)
    patterns = [each["pattern"] for each in rules.get("allOf", [rules])]

    for text in TEXTS:
        documented = all(re.search(pattern, text) for pattern in patterns)
        assert documented == _accepted(validators, text), repr(text)


def _accepted(validators, text):
    try:
        for validator in validators:
            validator(text)
    except ValidationError:
        return False
    return True


def test_a_body_over_its_limit_is_documented_on_every_operation_saying_when_it_lacks_rate_limit_headers(document):
    for path, item in document["paths"].items():
        for operation in item.values():
            too_large = operation["responses"]["413"]
            upload = path.endswith("/files/upload")
            lines = {DOCUMENTED_CODE.match(line)[1]: line for line in too_large["description"].splitlines()}
            assert ("filetoolarge" if upload else "bodytoolarge") in lines, operation["operationId"]
            assert ("bodytoolarge" if upload else "filetoolarge") not in lines, operation["operationId"]
            assert "fileoversized" in lines  # Moodle's, after the budget
            # Some 413s come after the rate limit (Moodle's, an upload's files), some before it (a declared length):
            # the headers are listed, and the codes that may come without them say so.
            rate_limit = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
            assert set(too_large["headers"]) == {"X-Request-ID", *rate_limit}
            without = {code for code, line in lines.items() if "without `RateLimit-*` headers" in line}
            assert without == {"filetoolarge" if upload else "bodytoolarge"}, operation["operationId"]
