from pyramid.view import view_defaults

from lms_api.errors import ApiError, ErrorCode
from lms_api.jobs import FINISHED, RETRY_AFTER_S, Job, JobEngine
from lms_api.schemas.jobs import JobListSchema, JobPath, JobSchema, JobsQuery
from lms_api.security import Scope
from lms_api.views import JOB_ROUTE, ApiViews, api_routes, api_view


@api_routes({"api.moodle.jobs": "/api/moodle/jobs", JOB_ROUTE: "/api/moodle/jobs/{id}"})
@view_defaults(route_name=JOB_ROUTE)
class JobViews(ApiViews):
    @api_view(
        request_method="GET",
        permission=Scope.JOBS_READ,
        path=JobPath(),
        answers=JobSchema(),
        errors=(ErrorCode.JOB_NOT_FOUND, ErrorCode.JOBS_UNAVAILABLE),
    )
    def job(self) -> object:
        """A background job: its state, progress, and once finished its `result` or `error`.

        Only the caller who submitted it, or one with `admin`, finds it (`jobnotfound` for anyone else). While it is
        `queued` or `running`, `Retry-After` says when to ask again. Kept `JOBS_TTL_S` once finished; lost when the
        gateway's process stops, unless `JOBS_ENGINE=rq` keeps it in Redis for every replica.
        """
        job = self._own_job()
        if job.state not in FINISHED:
            self.request.response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return job.resource()

    @api_view(
        route_name="api.moodle.jobs",
        request_method="GET",
        permission=Scope.JOBS_READ,
        query=JobsQuery(),
        answers=JobListSchema(),
        errors=(ErrorCode.JOBS_UNAVAILABLE,),
    )
    def jobs(self) -> object:
        """The caller's background jobs, newest first, paged (`page` from 0, `perpage` up to 200).

        Each is a summary: its state, progress and times, and once it has failed its error's `code` and `message`;
        its `result` and the error's `details` (which grow with its items) are read at the job's own URL.
        """
        page, perpage = self.request.validated.query["page"], self.request.validated.query["perpage"]
        jobs = self._engine.jobs_of(self.caller.sub)
        shown = jobs[page * perpage : (page + 1) * perpage]
        return {"jobs": [job.summary() for job in shown], "total": len(jobs), "page": page, "perpage": perpage}

    @api_view(
        request_method="DELETE",
        permission=Scope.JOBS_READ,
        path=JobPath(),
        answers=JobSchema(),
        errors=(ErrorCode.JOB_NOT_FOUND, ErrorCode.JOB_FINISHED, ErrorCode.JOBS_UNAVAILABLE),
    )
    def cancel(self) -> object:
        """Cancel a background job: a queued one ends `cancelled` at once, nothing written; a running one stops
        between two Moodle calls and ends `cancelled`, its `error.details` saying what was applied (it stays).

        A finished job is `jobfinished`. The job's owner cancels it (`jobs:read` is enough: cancelling only writes
        less than the submission, which needed the write's scope), or a caller with `admin`.
        """
        job = self._own_job()
        self.request.audit_targets.update(job_id=job.id)
        return self._engine.cancel(job.id).resource()

    @property
    def _engine(self) -> JobEngine:
        engine: JobEngine = self.request.registry.jobs
        return engine

    def _own_job(self) -> Job:
        job_id: str = self.request.validated.path["id"]
        job = self._engine.get(job_id)
        if job is None or (job.sub != self.caller.sub and not self.caller.has_scope(Scope.ADMIN)):
            raise ApiError(ErrorCode.JOB_NOT_FOUND, f"No background job {job_id} of yours is kept")
        return job
