from pyramid.request import Request

from lms_api.cache import CachedMoodle
from lms_api.errors import ErrorCode
from lms_api.moodle.client import MoodleClient
from lms_api.schemas.base import load_json_body, load_matchdict, load_query
from lms_api.schemas.courses import (
    CourseCreate,
    CourseListSchema,
    CoursePath,
    CourseSchema,
    CoursesQuery,
    CourseUpdate,
    CreatedCourseSchema,
)
from lms_api.security import Scope
from lms_api.services import courses
from lms_api.views import api_view

_query, _create, _update, _path = CoursesQuery(), CourseCreate(), CourseUpdate(), CoursePath()
_listing, _course, _created = CourseListSchema(), CourseSchema(), CreatedCourseSchema()


@api_view(
    route_name="api.moodle.courses",
    request_method="GET",
    permission=Scope.COURSES_READ,
    query=_query,
    answers=_listing,
    cached=True,
)
def list_courses(request: Request) -> object:
    """Courses, a page at a time: all of them, a search (`search`), or one category's (`category`).

    The site's front page is never listed. Cached (`courses`).
    """
    return _listing.dump(courses.list_courses(request.find_service(CachedMoodle), **load_query(request, _query)))


@api_view(
    route_name="api.moodle.courses",
    request_method="POST",
    permission=Scope.COURSES_WRITE,
    body=_create,
    answers=_created,
    status=201,
    errors=(ErrorCode.CATEGORY_NOT_FOUND,),
)
def create_course(request: Request) -> object:
    """Create a course; `Location` names it. Drops the cached course entries."""
    fields = load_json_body(request, _create)
    request.audit_targets.update(categoryid=fields["categoryid"], shortname=fields["shortname"])
    courses.require_offered_format(fields, request.lms_settings.moodle_course_formats)
    created = courses.create_course(request.find_service(MoodleClient), fields)
    request.audit_targets["course_id"] = created["id"]
    request.response.location = request.public_url(request.route_path("api.moodle.course", course_id=created["id"]))
    return _created.dump(created)


@api_view(
    route_name="api.moodle.course",
    request_method="GET",
    permission=Scope.COURSES_READ,
    path=_path,
    answers=_course,
    errors=(ErrorCode.COURSE_NOT_FOUND,),
    cached=True,
)
def get_course(request: Request) -> object:
    """One course by its id. Cached (`courses`)."""
    return _course.dump(
        courses.get_course(request.find_service(CachedMoodle), load_matchdict(request, _path)["course_id"])
    )


@api_view(
    route_name="api.moodle.course",
    request_method="PATCH",
    permission=Scope.COURSES_WRITE,
    path=_path,
    body=_update,
    answers=_course,
    errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.CATEGORY_NOT_FOUND),
)
def update_course(request: Request) -> object:
    """Change the given fields of a course and answer it as saved. Drops the cached course entries."""
    course_id = load_matchdict(request, _path)["course_id"]
    request.audit_targets["course_id"] = course_id
    changes = load_json_body(request, _update)
    request.audit_targets["fields"] = sorted(changes)
    courses.require_offered_format(changes, request.lms_settings.moodle_course_formats)
    return _course.dump(courses.update_course(request.find_service(MoodleClient), course_id, changes))
