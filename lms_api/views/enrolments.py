from pyramid.request import Request

from lms_api.errors import ErrorCode
from lms_api.moodle.client import MoodleClient
from lms_api.schemas.base import load_json_body
from lms_api.schemas.enrolments import EnrolBody, EnrolResultSchema
from lms_api.security import Scope
from lms_api.services import enrolments
from lms_api.views import api_view

_body, _result = EnrolBody(), EnrolResultSchema()


@api_view(
    route_name="api.moodle.enrol",
    request_method="POST",
    permission=Scope.ENROL_WRITE,
    body=_body,
    answers=_result,
    errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.USER_NOT_FOUND),
)
def enrol(request: Request) -> object:
    """Enrol users into courses with a role (manual enrolment).

    Only the roles the gateway knows may be given (`MOODLE_ROLE_IDS`), and those beyond `MOODLE_ASSIGNABLE_ROLES`
    (`manager`) only with the `admin` scope as well. The guest user is refused, and courses and users are checked
    first (a deleted user counts as missing); a batch larger than Moodle's `max_input_vars` allows is split, and a
    failure after the first call says what was applied.
    """
    wanted = load_json_body(request, _body)["enrolments"]
    request.audit_targets.update(
        course_ids=sorted({enrolment["courseid"] for enrolment in wanted}),
        user_ids=sorted({enrolment["userid"] for enrolment in wanted}),
        enrolments=len(wanted),
    )
    wanted = enrolments.resolve_roles(wanted, request.lms_settings, request.identity)
    return _result.dump(enrolments.enrol(request.find_service(MoodleClient), wanted))
