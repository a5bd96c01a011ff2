from pyramid.view import view_defaults

from lms_api.errors import ErrorCode
from lms_api.schemas.files import AttachBody, AttachedSchema, UploadForm, UploadSchema
from lms_api.security import Scope
from lms_api.services import files
from lms_api.views import ApiViews, api_routes, api_view


@api_routes(
    {"api.moodle.files.upload": "/api/moodle/files/upload", "api.moodle.files.attach": "/api/moodle/files/attach"}
)
@view_defaults(route_name="api.moodle.files.upload")
class FileViews(ApiViews):
    @api_view(
        request_method="POST",
        permission=Scope.FILES_WRITE,
        form=UploadForm(),
        answers=UploadSchema(),
        status=201,
        errors=(
            ErrorCode.DRAFT_NOT_FOUND,
            ErrorCode.FILE_TOO_LARGE,
            ErrorCode.INVALID_MULTIPART,
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ),
        # Sent again, the files land in a new draft item (the lost one is never attached and expires), or, into an
        # itemid given, are refused as filenameexist if the first attempt had stored them.
        resend_when_unknown=True,
    )
    def upload(self) -> object:
        """Upload files into one draft item of the token user (multipart, one or more `file` parts).

        The draft item is then attached to a course with `POST /files/attach`. An `itemid` adds the files to a draft
        item this caller uploaded before. The body is refused at the first part past a limit: files, parts, the length
        of a text field or of a part header. `contextid`, `component` and `filearea` are refused: Moodle stores every
        upload in the token user's draft area.
        """
        form, request = self.request.validated.form, self.request
        request.audit_targets.update(filenames=[upload.filename for upload in form["file"]], itemid=form["itemid"])
        uploaded = files.upload(
            self.moodle,
            form["file"],
            form["itemid"],
            max_mb=request.lms_settings.moodle_max_upload_mb,
            owners=request.draft_owners,
            sub=self.caller.sub,
        )
        request.audit_targets["itemid"] = uploaded["itemid"]
        return uploaded

    @api_view(
        route_name="api.moodle.files.attach",
        request_method="POST",
        permission=Scope.FILES_WRITE,
        body=AttachBody(),
        answers=AttachedSchema(),
        status=201,
        errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.DRAFT_NOT_FOUND),
    )
    def attach(self) -> object:
        """Attach a draft item this caller uploaded to a course section as a file resource.

        Needs the sync-service plugin's function (`MOODLE_ATTACH_FUNCTION`) in the token's service. `intro` is
        refused: that function has no description parameter.
        """
        body, request = self.request.validated.body, self.request
        request.audit_targets.update(course_id=body["courseid"], draftitemid=body["draftitemid"])
        attached = files.attach(self.moodle, body, owners=request.draft_owners, sub=self.caller.sub)
        request.audit_targets["cmid"] = attached["cmid"]
        return attached
