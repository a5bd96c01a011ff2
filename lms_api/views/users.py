from pyramid.view import view_defaults

from lms_api.errors import ErrorCode
from lms_api.jobs import Deferred, JobKind
from lms_api.schemas.users import (
    UsersByFieldQuery,
    UsersByFieldSchema,
    UsersCreate,
    UsersCreatedSchema,
    UsersUpdate,
    UsersUpdatedSchema,
)
from lms_api.security import Scope
from lms_api.services import users, userwrites
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.users.by_field": "/api/moodle/users/by-field", "api.moodle.users": "/api/moodle/users"})
@view_defaults(route_name="api.moodle.users")
class UserViews(ApiViews):
    @api_view(
        route_name="api.moodle.users.by_field",
        request_method="GET",
        permission=Scope.USERS_READ,
        query=UsersByFieldQuery(),
        answers=UsersByFieldSchema(),
        cached=True,
    )
    def users_by_field(self) -> object:
        """Users by id, idnumber, username or email.

        `missing` lists the values no user has; `unchecked` those the gateway could not check. Cached (`users`).
        """
        query = self.request.validated.query
        return users.users_by_field(self.moodle, query["field"], query["values"])

    @api_view(
        request_method="POST",
        permission=Scope.USERS_WRITE,
        body=UsersCreate(),
        answers=UsersCreatedSchema(),
        status=201,
        errors=(ErrorCode.INVALID_USERS,),
        settled_by="created_users",
        accepts_async=True,
    )
    def create_users(self) -> object:
        """Create 1 to 5,000 users: all of them, or none.

        Every reason Moodle would refuse a user is found before anything is written and named per user
        (`invalidusers`): the username's syntax, a username or email given twice or already on the site, the email's
        syntax, the password policy, the authentication plugin and language. The users are then sent in as many calls
        as Moodle's `max_input_vars` needs; a call that fails anyway says which users were created (with ids), not
        created, and not attempted. Drops the cached `users` entries. With `Prefer: respond-async`, checked, then run
        as a background job: 202 and the job.
        """
        plan = userwrites.prepare_create_users(self.moodle, self._users(), self.request.lms_settings)
        return Deferred(JobKind.USERS_CREATE, plan)

    def created_users(self) -> object:
        """After an answer that left the outcome unknown or partial: the users an earlier attempt created (the
        username on the site with the same email) are answered, the others created, as a background job when the
        retry asks for one (or JOBS_FORCE_ASYNC makes it one), as the first attempt would have been."""
        plan = userwrites.prepare_create_users(self.moodle, self._users(), self.request.lms_settings, resume=True)
        return Deferred(JobKind.USERS_CREATE, plan)

    @api_view(
        request_method="PATCH",
        permission=Scope.USERS_WRITE,
        body=UsersUpdate(),
        answers=UsersUpdatedSchema(),
        errors=(ErrorCode.USER_NOT_FOUND, ErrorCode.INVALID_USERS, ErrorCode.USERS_NOT_UPDATED),
        resend_when_unknown=True,  # setting the same fields again leaves each user as one update would
        accepts_async=True,
    )
    def update_users(self) -> object:
        """Change the given fields of 1 to 5,000 users (`id` and the fields to change).

        Checked before anything is written: every user exists (`usernotfound`), none twice, new usernames and emails
        valid, not given twice and free, a new password meets the policy (`invalidusers`). Moodle then updates the
        users it can: when it refuses some, the answer is `usersnotupdated` with `updated` and `failed` (each with
        its `code` and `message`), 409 (400 when every failure is the request's own). Drops the cached `users`
        entries. With `Prefer: respond-async`, checked, then run as a background job: 202 and the job.
        """
        plan = userwrites.prepare_update_users(self.moodle, self._users(), self.request.lms_settings, self.caller)
        return Deferred(JobKind.USERS_UPDATE, plan)

    def _users(self) -> list[dict[str, object]]:
        wanted: list[dict[str, object]] = self.request.validated.body["users"]
        self.request.audit_targets.update(users=len(wanted))
        return wanted
