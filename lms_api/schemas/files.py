"""Files: the multipart upload form, the attach body, and what is answered about stored files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from marshmallow import ValidationError, fields, missing, validate

from lms_api.schemas.base import (
    Choices,
    FilePart,
    Flag,
    FormSchema,
    Records,
    RequestSchema,
    ResponseSchema,
    Text,
    no_html,
    not_blank,
    single_line,
    strict_int,
    text_int,
)

MAX_FILES = 20
MAX_FILENAME = 255  # files.filename in Moodle's database
MAX_SECTION = 10_000  # Moodle's own cap on course sections is far lower (maxsections, default 52)


# Why a field of the original design is refused rather than taken and ignored.
DRAFT_AREA_ONLY = (
    "Not taken: Moodle's upload.php stores every upload in the token user's draft area, whatever is given here; "
    "POST /files/attach puts the draft item into a course"
)
NO_INTRO = "Not taken: the attach function (MOODLE_ATTACH_FUNCTION) has no intro parameter"


@dataclass(frozen=True)
class UploadedFile:
    """A file of the upload form: its usable name, its content (rewindable) and its media type."""

    filename: str
    stream: IO[bytes]
    content_type: str


class FileParts(fields.Field[Any]):
    """One or more multipart file parts (the same field name repeated), as :class:`UploadedFile` objects.

    How many there may be is counted while the body is read (the form's ``max_files``).
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[UploadedFile]:
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
            uploads.append(UploadedFile(filename, part.file, part.type or "application/octet-stream"))
        return uploads

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string", "format": "binary"}}


class Refused(fields.Field[Any]):
    """A field a caller of the original design may send, refused with the reason, whatever its value: taking it and
    then ignoring it would let the caller believe it was honoured."""

    def __init__(self, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kwargs: Any) -> Any:
        if value is missing:
            return super().deserialize(value, attr, data, **kwargs)
        raise ValidationError(self.reason)  # null included: marshmallow would answer "may not be null" first

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return {"not": {}, "description": self.reason}


class UploadForm(FormSchema):
    repeatable = ("file",)
    max_files = MAX_FILES

    file = FileParts(required=True)
    itemid = text_int(0, load_default=0)
    contextid = Refused(DRAFT_AREA_ONLY)
    component = Refused(DRAFT_AREA_ONLY)
    filearea = Refused(DRAFT_AREA_ONLY)


class AttachBody(RequestSchema):
    courseid = strict_int(1, required=True)
    draftitemid = strict_int(1, required=True)
    name = Text(required=True, validate=[validate.Length(max=255), not_blank, single_line, no_html])
    intro = Refused(NO_INTRO)
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
