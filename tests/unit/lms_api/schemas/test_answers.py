"""Answer schemas dump lists of records as marshmallow's own ``Nested(many=True)`` does (``Records``): declared fields
only, each by its field, a missing one left out or given its ``dump_default``."""

import json

import pytest
from marshmallow import fields

from lms_api.schemas.base import Records
from lms_api.schemas.courses import CourseListSchema
from lms_api.schemas.files import UploadSchema
from lms_api.schemas.notifications import NotificationsSchema
from lms_api.schemas.siteinfo import SiteInfoSchema
from lms_api.schemas.users import UsersByFieldSchema
from tests.support.paths import GOLDEN_DIR

GOLDEN_SITE_INFO = json.loads((GOLDEN_DIR / "core_webservice_get_site_info.json").read_text())
COURSE_FIELDS = ("shortname", "fullname", "displayname", "categoryid", "summary", "summaryformat", "format",
                 "startdate", "enddate", "visible", "idnumber")  # fmt: skip


def test_a_real_sites_functions_and_features_are_dumped_with_their_declared_fields_only():
    dumped = SiteInfoSchema().dump(GOLDEN_SITE_INFO)

    assert len(dumped["functions"]) == len(GOLDEN_SITE_INFO["functions"]) > 700  # the case Nested(many) is timed on
    assert dumped["functions"] == [{"name": f["name"], "version": f["version"]} for f in GOLDEN_SITE_INFO["functions"]]
    assert dumped["advancedfeatures"] == GOLDEN_SITE_INFO["advancedfeatures"]
    assert "userprivateaccesskey" in GOLDEN_SITE_INFO and "userprivateaccesskey" not in dumped


def test_courses_missing_fields_are_null_and_their_values_are_typed_by_the_field():
    listing = {
        "courses": [
            {"id": 2, "shortname": "PY101", "categoryid": "1", "visible": True, "secret": "x"},
            {"id": "3", "summary": None},
            {},
        ],
        "total": 3,
    }

    dumped = CourseListSchema().dump(listing)

    nulls = dict.fromkeys(COURSE_FIELDS)
    assert dumped["courses"] == [
        {**nulls, "id": 2, "shortname": "PY101", "categoryid": 1, "visible": 1},
        {**nulls, "id": 3},
        nulls,
    ]
    assert dumped["total"] == 3


def test_fields_moodle_did_not_send_are_left_out_where_no_default_is_declared():
    page = {"notifications": [{"id": 1, "read": 1, "deleted": "", "contexturl": None, "customdata": {"a": [1]}, "x": 0},
                              {"id": 2, "read": False, "subject": 5}]}  # fmt: skip
    users = {"users": [{"id": 3, "username": "student1", "suspended": 0, "confirmed": "true", "password": "secret"}]}

    # marshmallow's Boolean passes on what Moodle sent (PHP's 1, 0, "true"): as the gateway always has
    assert NotificationsSchema().dump(page)["notifications"] == [
        {"id": 1, "read": 1, "deleted": "", "contexturl": None, "customdata": {"a": [1]}},
        {"id": 2, "read": False, "subject": "5"},
    ]
    assert UsersByFieldSchema().dump(users)["users"] == [
        {"id": 3, "username": "student1", "suspended": 0, "confirmed": "true"}
    ]


def test_no_list_is_dumped_as_null_and_an_empty_one_as_empty():
    assert CourseListSchema().dump({"courses": None})["courses"] is None
    assert CourseListSchema().dump({"courses": []})["courses"] == []


def _as_nested(schema_class):
    """The same schema with each Records field declared as marshmallow's own Nested(many=True)."""
    declared = {
        name: fields.Nested(field.nested, many=True) if isinstance(field, Records) else field
        for name, field in schema_class._declared_fields.items()
    }
    return type(schema_class.__name__, (schema_class,), declared)


@pytest.mark.parametrize(
    ("schema_class", "answer"),
    [
        (SiteInfoSchema, GOLDEN_SITE_INFO),
        (
            CourseListSchema,
            {"courses": [{"id": 2, "shortname": "PY101", "categoryid": "1", "visible": True, "x": 1}, {}], "total": 2},
        ),
        (UsersByFieldSchema, {"users": [{"id": 3, "suspended": 0, "email": "a@example.org"}, {"id": "4"}]}),
        (NotificationsSchema, {"notifications": [{"id": 1, "read": True, "timecreated": "5"}, {}], "unreadcount": 1}),
        (UploadSchema, {"itemid": 5, "files": [{"filename": "a.pdf", "filesize": 3, "userid": "2"}]}),
    ],
)
def test_records_dump_what_marshmallows_nested_many_dumps(schema_class, answer):
    assert any(isinstance(field, Records) for field in schema_class._declared_fields.values())

    assert schema_class().dump(answer) == _as_nested(schema_class)().dump(answer)
