from pyramid.request import Request

from lms_api import drafts
from lms_api.errors import ErrorCode
from lms_api.moodle.client import MoodleClient
from lms_api.schemas.base import load_json_body, load_multipart
from lms_api.schemas.files import MAX_FILES, AttachBody, AttachedSchema, UploadForm, UploadSchema
from lms_api.security import Scope
from lms_api.services import files
from lms_api.views import api_view

_form, _attach = UploadForm(), AttachBody()
_uploaded, _attached = UploadSchema(), AttachedSchema()


@api_view(
    route_name="api.moodle.files.upload",
    request_method="POST",
    permission=Scope.FILES_WRITE,
    form=_form,
    answers=_uploaded,
    status=201,
    errors=(
        ErrorCode.DRAFT_NOT_FOUND,
        ErrorCode.FILE_TOO_LARGE,
        ErrorCode.INVALID_MULTIPART,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ),
)
def upload(request: Request) -> object:
    """Upload files into one draft item of the token user (multipart, one or more `file` parts).

    The draft item is then attached to a course with `POST /files/attach`. An `itemid` adds the files to a draft
    item this caller uploaded before. The body is refused at the first part past a limit: files, parts, the length
    of a text field or of a part header.
    """
    form = load_multipart(request, _form, repeatable=("file",), max_files=MAX_FILES)
    request.audit_targets.update(filenames=[upload.filename for upload in form["file"]], itemid=form["itemid"])
    files.check_sizes(form["file"], request.lms_settings.moodle_max_upload_mb)
    owners, sub = request.draft_owners, request.identity.sub
    if form["itemid"]:
        drafts.check_owner(owners, form["itemid"], sub)
    uploaded = files.upload(
        request.find_service(MoodleClient), form["file"], form["itemid"], lambda itemid: owners.remember(itemid, sub)
    )
    request.audit_targets["itemid"] = uploaded["itemid"]
    return _uploaded.dump(uploaded)


@api_view(
    route_name="api.moodle.files.attach",
    request_method="POST",
    permission=Scope.FILES_WRITE,
    body=_attach,
    answers=_attached,
    status=201,
    errors=(ErrorCode.COURSE_NOT_FOUND, ErrorCode.DRAFT_NOT_FOUND),
)
def attach(request: Request) -> object:
    """Attach a draft item this caller uploaded to a course section as a file resource.

    Needs the sync-service plugin's function (`MOODLE_ATTACH_FUNCTION`) in the token's service.
    """
    body = load_json_body(request, _attach)
    request.audit_targets.update(course_id=body["courseid"], draftitemid=body["draftitemid"])
    drafts.check_owner(request.draft_owners, body["draftitemid"], request.identity.sub)
    attached = files.attach(request.find_service(MoodleClient), request.lms_settings.moodle_attach_function, body)
    request.audit_targets["cmid"] = attached["cmid"]
    return _attached.dump(attached)
