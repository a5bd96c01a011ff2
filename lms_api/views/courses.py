from pyramid.view import view_defaults

from lms_api.errors import ErrorCode
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
from lms_api.views import ApiViews, api_routes, api_view

_path = CoursePath()


@api_routes({"api.moodle.courses": "/api/moodle/courses", "api.moodle.course": "/api/moodle/courses/{course_id}"})
@view_defaults(route_name="api.moodle.courses")
class CourseViews(ApiViews):
    @api_view(
        request_method="GET",
        permission=Scope.COURSES_READ,
        query=CoursesQuery(),
        answers=CourseListSchema(),
        cached=True,
    )
    def list_courses(self) -> object:
        """Courses, a page at a time: all of them, a search (`search`), or one category's (`category`).

        The site's front page is never listed. Cached (`courses`).
        """
        return courses.list_courses(self.moodle, **self.request.validated.query)

    @api_view(
        request_method="POST",
        permission=Scope.COURSES_WRITE,
        body=CourseCreate(),
        answers=CreatedCourseSchema(),
        status=201,
        errors=(ErrorCode.CATEGORY_NOT_FOUND,),
        settled_by="created_course",
    )
    def create_course(self) -> object:
        """Create a course; `Location` names it. Drops the cached course entries."""
        request, fields = self.request, self.request.validated.body
        request.audit_targets.update(categoryid=fields["categoryid"], shortname=fields["shortname"])
        return self._located(courses.create_course(self.moodle, fields, request.lms_settings.moodle_course_formats))

    def created_course(self) -> object:
        """After an answer that left the create's outcome unknown: the course an earlier attempt created, if any."""
        created = courses.created_already(self.moodle, self.request.validated.body)
        return None if created is None else self._located(created)

    def _located(self, created: courses.CreatedCourse) -> courses.CreatedCourse:
        request = self.request
        request.audit_targets["course_id"] = created["id"]
        request.response.location = request.public_url(request.route_path("api.moodle.course", course_id=created["id"]))
        return created

    @api_view(
        route_name="api.moodle.course",
        request_method="GET",
        permission=Scope.COURSES_READ,
        path=_path,
        answers=CourseSchema(),
        errors=(ErrorCode.COURSE_NOT_FOUND,),
        cached=True,
    )
    def get_course(self) -> object:
        """One course by its id. Cached (`courses`)."""
        return courses.get_course(self.moodle, self.request.validated.path["course_id"])

    @api_view(
        route_name="api.moodle.course",
        request_method="PATCH",
        permission=Scope.COURSES_WRITE,
        path=_path,
        body=CourseUpdate(),
        answers=CourseSchema(),
        errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.CATEGORY_NOT_FOUND),
        resend_when_unknown=True,  # setting the same fields again leaves the course as one update would
    )
    def update_course(self) -> object:
        """Change the given fields of a course and answer it as saved. Drops the cached course entries."""
        request, validated = self.request, self.request.validated
        course_id, changes = validated.path["course_id"], validated.body
        request.audit_targets.update(course_id=course_id, fields=sorted(changes))
        return courses.update_course(self.moodle, course_id, changes, request.lms_settings.moodle_course_formats)
