"""Records dumps a list of flat records exactly as List(Nested(schema)) would, only faster."""

import json

import pytest
from marshmallow import fields

from lms_api.schemas.base import Records
from lms_api.schemas.courses import CourseSchema
from lms_api.schemas.notifications import NotificationSchema
from lms_api.schemas.siteinfo import FunctionSchema
from lms_api.schemas.users import UserSchema
from tests.conftest import GOLDEN_DIR

SITE_FUNCTIONS = json.loads((GOLDEN_DIR / "core_webservice_get_site_info.json").read_text())["functions"]
COURSES = [
    {"id": 2, "shortname": "PY101", "fullname": "Intro", "categoryid": "1", "visible": True, "secret": "x"},
    {"id": "3", "summary": None},  # missing fields take their dump_default (null); a string id becomes an integer
    {},
]
NOTIFICATIONS = [
    {"id": 1, "read": 1, "deleted": "", "contexturl": None, "timeread": None, "customdata": {"a": [1]}, "x": 0},
    {"id": 2, "read": False, "subject": 5},
]
USERS = [{"id": 3, "username": "student1", "suspended": 0, "confirmed": "true", "password": "never shown"}]


@pytest.mark.parametrize(
    ("schema", "records"),
    [(FunctionSchema, SITE_FUNCTIONS), (CourseSchema, COURSES), (NotificationSchema, NOTIFICATIONS),
     (UserSchema, USERS), (CourseSchema, []), (CourseSchema, None)],
)  # fmt: skip
def test_records_dump_what_a_nested_list_dumps(schema, records):
    fast, nested = Records(schema), fields.List(fields.Nested(schema))

    assert fast.serialize("items", {"items": records}) == nested.serialize("items", {"items": records})


def test_undeclared_fields_never_leave():
    dumped = Records(UserSchema).serialize("users", {"users": USERS})

    assert "password" not in dumped[0]
    assert len(SITE_FUNCTIONS) > 700  # the recording is a real site's: the case this field is for
