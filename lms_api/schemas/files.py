"""Files: the multipart upload form, the attach body, and what is answered about stored files."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from lms_api.moodle.client import UploadFile
from lms_api.schemas.base import (
    FilePart,
    Flag,
    Records,
    RequestSchema,
    ResponseSchema,
    no_control_characters,
    no_html,
    not_blank,
    single_line,
    strict_int,
    text_int,
)

MAX_FILES = 20
MAX_FILENAME = 255  # files.filename in Moodle's database
MAX_SECTION = 10_000  # Moodle's own cap on course sections is far lower (maxsections, default 52)


class FileParts(fields.Field[Any]):
    """One or more multipart file parts (the same field name repeated), as :class:`UploadFile` objects.

    How many there may be is counted while the body is read (``load_multipart``'s ``max_files``).
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[UploadFile]:
        parts = value if isinstance(value, list) else [value]
        uploads = []
        for part in parts:
            if not isinstance(part, FilePart) or not part.filename:
                raise ValidationError("Must be a file part (Content-Disposition with a filename)")
            # Some browsers send the client's full path; Moodle keeps only the name.
            filename = part.filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
            if not filename or filename in (".", ".."):
                raise ValidationError("The file part has no usable filename")
            if len(filename) > MAX_FILENAME:
                raise ValidationError(f"File names are limited to {MAX_FILENAME} characters")
            single_line(filename)
            uploads.append(UploadFile(filename, part.file, part.type or "application/octet-stream"))
        return uploads


class UploadForm(RequestSchema):
    file = FileParts(required=True)
    itemid = text_int(0, load_default=0)
    # Accepted for callers of the original design; Moodle stores every upload in the token user's draft area.
    contextid = text_int(1)
    component = fields.String(validate=(validate.Length(max=100), single_line))
    filearea = fields.String(validate=(validate.Length(max=50), single_line))


class AttachBody(RequestSchema):
    courseid = strict_int(1, required=True)
    draftitemid = strict_int(1, required=True)
    name = fields.String(required=True, validate=[validate.Length(max=255), not_blank, single_line, no_html])
    # Accepted for the original design; the default function has no intro parameter.
    intro = fields.String(validate=no_control_characters)
    section = strict_int(0, MAX_SECTION, load_default=0)
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
    files = Records(StoredFileSchema)


class AttachedSchema(ResponseSchema):
    cmid = fields.Integer()
    courseid = fields.Integer()
    section = fields.Integer()
    name = fields.String()
    visible = fields.Boolean()
