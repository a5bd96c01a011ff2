from tests.unit.lms_api.views.support import answering, view_answer


def test_users_by_email_with_the_missing_ones_named(make_request, moodle):
    answering(
        moodle,
        core_user_get_users_by_field=[{"id": 3, "email": "ada@example.com", "username": "ada", "auth": "manual"}],
    )
    path = "/api/moodle/users/by-field?field=email&values=ADA@example.com,bob@example.com"

    data = view_answer(make_request(path, route="api.moodle.users.by_field"))

    assert data == {
        "users": [{"id": 3, "email": "ada@example.com", "username": "ada", "auth": "manual"}],
        "missing": ["bob@example.com"],
        "unchecked": [],
    }
    moodle.answer.assert_called_once_with(
        "core_user_get_users_by_field", {"field": "email", "values": ["ADA@example.com", "bob@example.com"]}
    )
    moodle.call.assert_not_called()
