from typing import Any

from pyramid.view import view_defaults

from lms_api.errors import ErrorCode
from lms_api.jobs import Deferred, JobKind
from lms_api.schemas.enrolments import EnrolBody, EnrolResultSchema
from lms_api.security import Scope
from lms_api.services import enrolments
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.enrol": "/api/moodle/enrol"})
@view_defaults(route_name="api.moodle.enrol")
class EnrolmentViews(ApiViews):
    @api_view(
        request_method="POST",
        permission=Scope.ENROL_WRITE,
        body=EnrolBody(),
        answers=EnrolResultSchema(),
        errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.USER_NOT_FOUND),
        settled_by="enrolled",
        accepts_async=True,
    )
    def enrol(self) -> object:
        """Enrol users into courses with a role (manual enrolment).

        Only the roles the gateway knows may be given (`MOODLE_ROLE_IDS`), and those beyond `MOODLE_ASSIGNABLE_ROLES`
        (`manager`) only with the `admin` scope as well. The guest user is refused, and courses and users are checked
        first (a deleted user counts as missing); a batch larger than Moodle's `max_input_vars` allows is split, and a
        failure after the first call says what was applied. With `Prefer: respond-async`, checked, then run as a
        background job: 202 and the job.
        """
        plan = enrolments.prepare_enrol(self.moodle, self._wanted(), self.request.lms_settings, self.caller)
        return Deferred(JobKind.ENROL, plan)

    def enrolled(self) -> object:
        """After an answer that left the outcome unknown or partial: the answer when everyone holds the role now."""
        return enrolments.enrolled_already(self.moodle, self._wanted(), self.request.lms_settings, self.caller)

    def _wanted(self) -> list[dict[str, Any]]:
        wanted: list[dict[str, Any]] = self.request.validated.body["enrolments"]
        self.request.audit_targets.update(
            course_ids=sorted({enrolment["courseid"] for enrolment in wanted}),
            user_ids=sorted({enrolment["userid"] for enrolment in wanted}),
            enrolments=len(wanted),
        )
        return wanted
