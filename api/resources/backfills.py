"""POST /backfills (plan, dry-run or queue a historical load) and GET /backfills/<id>."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.http.auth import require_token
from api.schemas.backfills import BackfillRequestSchema, BackfillSchema, DryRunSchema
from api.broker import get_celery
from api.db import get_session
from api.http.json_body import JsonBodyParser
from api.schemas.common import ErrorSchema
from shared.backfill.request import (
    BackfillRequest,
    BackfillRequestError,
    backfill_progress,
    plan,
    submit_backfill,
)
from shared.errors import NotFound
from shared.jobs.submit import NOT_QUEUED, JobNotQueued

blp = Blueprint("backfills", __name__, url_prefix="/backfills",
                description="Historical backfills")
blp.ARGUMENTS_PARSER = JsonBodyParser()


def _request(body: dict[str, Any]) -> BackfillRequest:
    return BackfillRequest(source=body["source"], since=body["since"], until=body.get("until"),
                           assets=body.get("assets"), top=body.get("top"),
                           chunk_days=body.get("chunk_days"))


def _unprocessable(exc: BackfillRequestError) -> Any:
    abort(422, message=exc.message, errors={"json": {exc.field: [exc.message]}})


@blp.route("")
class Backfills(MethodView):
    """Queue backfills."""

    @blp.doc(security=[{"bearerAuth": []}])
    @require_token
    @blp.arguments(BackfillRequestSchema)
    @blp.response(202, BackfillSchema)
    @blp.alt_response(200, schema=DryRunSchema, success=True,
                      description="A dry run, or the backfill an identical request made")
    @blp.alt_response(401, schema=ErrorSchema, description="Missing bearer token")
    @blp.alt_response(403, schema=ErrorSchema, description="Wrong bearer token")
    @blp.alt_response(422, schema=ErrorSchema, description="Bad request, naming the field")
    @blp.alt_response(503, schema=ErrorSchema, description="Broker unavailable")
    def post(self, body: dict[str, Any]) -> Any:
        """Plan a backfill into chunks and queue it, or answer its cost (`dry_run`)

        Commits the backfill, then sends it to the workers, as POST /jobs does: a broker that
        refuses the message is a 503 and the backfill is failed (not left queued). The same
        source, coins, range and chunk size return the backfill made before (200), sent again
        if it did not succeed (it resumes from its done chunks).
        """
        settings = current_app.config["SETTINGS"]
        session = get_session()
        req = _request(body)
        try:
            if body.get("dry_run"):
                planned = plan(session, req, settings)
                windows = planned.pop("windows")
                planned["assets"] = planned.pop("coins")
                planned["granularity_seconds"] = sorted({w.granularity for w in windows})
                # A Response passes flask-smorest's 202 schema by: the dry run has its own.
                return jsonify(DryRunSchema().dump({"dry_run": True, **planned}))
            backfill, created = submit_backfill(session, get_celery(), req, settings)
        except BackfillRequestError as exc:
            session.rollback()
            return _unprocessable(exc)
        except JobNotQueued:
            abort(503, message=NOT_QUEUED)
        progress = backfill_progress(session, backfill.id)
        url = url_for("backfills.BackfillDetail", backfill_id=backfill.id)
        return {**(progress or {}), "status_url": url}, 202 if created else 200, {"Location": url}


@blp.route("/<id:backfill_id>")
class BackfillDetail(MethodView):
    """One backfill."""

    @blp.response(200, BackfillSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such backfill")
    def get(self, backfill_id: int) -> Any:
        """A backfill's progress: counts per chunk state and every chunk"""
        progress = backfill_progress(get_session(), backfill_id)
        if progress is None:
            raise NotFound(f"backfill {backfill_id} not found")
        return progress
