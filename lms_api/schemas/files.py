"""Files: the multipart upload form, the attach body, and what is answered about stored files."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from lms_api.moodle.client import UploadFile
from lms_api.schemas.base import Flag, RequestSchema, ResponseSchema, no_html, not_blank, strict_int

MAX_FILES = 20


class FileParts(fields.Field):
    """One or more multipart file parts (the same field name repeated), as :class:`UploadFile` objects."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[UploadFile]:
        parts = value if isinstance(value, list) else [value]
        if len(parts) > MAX_FILES:
            raise ValidationError(f"At most {MAX_FILES} files per upload")
        uploads = []
        for part in parts:
            if not hasattr(part, "file") or not getattr(part, "filename", None):
                raise ValidationError("Must be a file part (Content-Disposition with a filename)")
            # Some browsers send the client's full path; Moodle keeps only the name.
            filename = part.filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
            if not filename or filename in (".", ".."):
                raise ValidationError("The file part has no usable filename")
            uploads.append(UploadFile(filename, part.file, part.type or "application/octet-stream"))
        return uploads


class UploadForm(RequestSchema):
    file = FileParts(required=True)
    itemid = fields.Integer(load_default=0, validate=validate.Range(min=0))
    # Accepted for callers of the original design; Moodle stores every upload in the token user's draft area.
    contextid = fields.Integer()
    component = fields.String()
    filearea = fields.String()


class AttachBody(RequestSchema):
    courseid = strict_int(required=True, validate=validate.Range(min=1))
    draftitemid = strict_int(required=True, validate=validate.Range(min=1))
    name = fields.String(required=True, validate=[validate.Length(max=255), not_blank, no_html])
    intro = fields.String()  # accepted for the original design; the default function has no intro parameter
    section = strict_int(load_default=0, validate=validate.Range(min=0))
    visible = Flag(load_default=True)


class StoredFileSchema(ResponseSchema):
    filename = fields.String()
    filepath = fields.String()
    filesize = fields.Integer()
    itemid = fields.Integer()
    contextid = fields.Integer()
    component = fields.String()
    filearea = fields.String()
    userid = fields.Integer()  # upload.php sends it as a string
    license = fields.String()
    author = fields.String()


class UploadSchema(ResponseSchema):
    itemid = fields.Integer()
    files = fields.List(fields.Nested(StoredFileSchema))


class AttachedSchema(ResponseSchema):
    cmid = fields.Integer()
    courseid = fields.Integer()
    section = fields.Integer()
    name = fields.String()
    visible = fields.Boolean()
