"""Background jobs: the job resource, its path and the listing's query."""

from __future__ import annotations

from marshmallow import fields, validate

from lms_api.schemas.base import RequestSchema, ResponseSchema, text_int

MAX_PERPAGE = 200
MAX_PAGE = 1_000_000


class JobPath(RequestSchema):
    id = fields.String(
        required=True,
        validate=validate.Regexp(r"^[0-9a-f]{32}\Z", error="A job id: 32 lower-case hexadecimal digits"),
    )


class JobsQuery(RequestSchema):
    page = text_int(0, MAX_PAGE, load_default=0)
    perpage = text_int(1, MAX_PERPAGE, load_default=50)


class JobProgressSchema(ResponseSchema):
    done = fields.Integer(metadata={"description": "items applied so far, after the last Moodle call"})
    total = fields.Integer(metadata={"description": "items the job writes (enrolments, users)"})


class JobSchema(ResponseSchema):
    id = fields.String()
    kind = fields.String(metadata={"description": "`enrol`, `users.create` or `users.update`"})
    state = fields.String(
        metadata={"description": "`queued`, `running`, `succeeded`, `failed`, `partial` or `cancelled`"}
    )
    created = fields.String(metadata={"description": "ISO 8601, UTC"})
    started = fields.String(allow_none=True, dump_default=None)
    finished = fields.String(allow_none=True, dump_default=None)
    progress = fields.Nested(JobProgressSchema)
    result = fields.Raw(
        metadata={"description": "once `succeeded`: the `data` the route answers when asked without a job"}
    )
    error = fields.Raw(
        metadata={
            "description": "once `failed`, `partial` or `cancelled`: the `error` object the route answers (`code`, "
            "`message`, `details`, `request_id`)"
        }
    )


class JobSummarySchema(JobSchema):
    """A job as the listing shows it: what grows with its items is left to the job's own URL."""

    class Meta:
        exclude = ("result",)

    error = fields.Raw(
        metadata={
            "description": "once `failed`, `partial` or `cancelled`: the error's `code`, `message` and `request_id`, "
            "without its `details` (which items were applied), which `GET /api/moodle/jobs/{id}` gives"
        }
    )


class JobListSchema(ResponseSchema):
    jobs = fields.List(
        fields.Nested(JobSummarySchema),
        metadata={
            "description": "the caller's jobs, newest first, as summaries: no `result`, no `error.details` (both grow "
            "with the job's items); the job's own URL has them"
        },
    )
    total = fields.Integer()
    page = fields.Integer()
    perpage = fields.Integer()
