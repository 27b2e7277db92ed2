"""POST /jobs (queue an ETL job), GET /jobs (list them) and GET /jobs/<id> (its progress)."""
from __future__ import annotations

from typing import Any

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.http.auth import require_token
from api.broker import get_celery
from api.db import get_session
from api.http.envelope import page_window, paged
from api.http.json_body import JsonBodyParser
from api.schemas.common import ErrorSchema
from api.schemas.jobs import (
    JobAcceptedSchema,
    JobHeadersSchema,
    JobRequestSchema,
    JobsArgsSchema,
    JobSchema,
    JobsEnvelopeSchema,
)
from shared.errors import NotFound
from shared.queries.jobs import list_jobs, load_job
from shared.jobs.submit import NOT_QUEUED, JobNotQueued, submit_job

blp = Blueprint("jobs", __name__, url_prefix="/jobs", description="ETL jobs")
# A body sent as anything but JSON is a 415, and a deeply nested one a 400 (not ignored/500).
blp.ARGUMENTS_PARSER = JsonBodyParser()


@blp.route("")
class Jobs(MethodView):
    """List and queue jobs."""

    @blp.arguments(JobsArgsSchema, location="query")
    @blp.response(200, JobsEnvelopeSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List jobs with their runs, newest first

        Filter by `status`, `trigger` (`api`, `beat`, `cli`) and `since`/`until` (created_at);
        page with `page`/`page_size` or `cursor`.
        """
        page = list_jobs(get_session(), status=args.get("status"), trigger=args.get("trigger"),
                         since=args.get("since"), until=args.get("until"), **page_window(args))
        return paged(page, args)

    @blp.doc(security=[{"bearerAuth": []}])
    @require_token
    @blp.arguments(JobRequestSchema, required=False)
    @blp.arguments(JobHeadersSchema, location="headers")
    @blp.response(202, JobAcceptedSchema)
    @blp.alt_response(200, schema=JobAcceptedSchema, success=True,
                      description="Replay of an earlier request with the same Idempotency-Key")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing bearer token")
    @blp.alt_response(400, schema=ErrorSchema, description="Body is not valid JSON or too deep")
    @blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
    @blp.alt_response(413, schema=ErrorSchema, description="Body too large")
    @blp.alt_response(415, schema=ErrorSchema, description="Body sent as another type than JSON")
    @blp.alt_response(429, schema=ErrorSchema, description="Too many jobs requested")
    @blp.alt_response(503, schema=ErrorSchema, description="Broker unavailable")
    def post(self, body: dict[str, Any] | None, headers: dict[str, Any]) -> Any:
        """Queue an ETL job for some or all sources

        Commits the job, then sends `group(extract per source) | normalize` to the workers.
        With an `Idempotency-Key` header a repeated request returns the first job (200) instead
        of queueing another; reusing a key for other sources is a 422.
        """
        settings = current_app.config["SETTINGS"]
        sources = (body or {}).get("sources") or list(settings.enabled_sources)
        key = headers.get("idempotency_key")
        try:
            created = submit_job(get_session(), get_celery(), sources, trigger="api",
                                 idempotency_key=key)
        except JobNotQueued:
            abort(503, message=NOT_QUEUED)
        job = created.job
        # A replay wrote nothing, so checking it after the (empty) commit is the same as before.
        if not created.created and sorted(job.sources) != sorted(sources):
            abort(422, message="Idempotency-Key was already used for other sources",
                  errors={"headers": {"Idempotency-Key": [
                      f"already used for sources {job.sources}"]}})
        status_url = url_for("jobs.JobDetail", job_id=job.id)
        body_out = {"id": job.id, "status": job.status, "sources": job.sources,
                    "status_url": status_url}
        return body_out, 202 if created.created else 200, {"Location": status_url}


@blp.route("/<id:job_id>")
class JobDetail(MethodView):
    """One job."""

    @blp.response(200, JobSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such job")
    def get(self, job_id: int) -> Any:
        """Show a job and each source's run: status, counts, timings, error"""
        job = load_job(get_session(), job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job
