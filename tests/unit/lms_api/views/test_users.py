from lms_api.views.users import users_by_field
from tests.unit.mocked_moodle import answering


def test_users_by_email_with_the_missing_ones_named(make_request, moodle):
    moodle.call.side_effect = answering(
        core_user_get_users_by_field=[{"id": 3, "email": "ada@example.com", "username": "ada", "auth": "manual"}]
    )

    data = users_by_field(make_request("/api/moodle/users/by-field?field=email&values=ADA@example.com,bob@example.com"))

    assert data == {
        "users": [{"id": 3, "email": "ada@example.com", "username": "ada", "auth": "manual"}],
        "missing": ["bob@example.com"],
        "unchecked": [],
    }
    moodle.call.assert_called_once_with(
        "core_user_get_users_by_field", {"field": "email", "values": ["ADA@example.com", "bob@example.com"]}
    )
