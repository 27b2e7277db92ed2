"""The response schema of GET /stats (api.resources.stats)."""
from __future__ import annotations

import marshmallow as ma

from api.schemas.common import SafeErrorText


class RunRefSchema(ma.Schema):
    """A pointer to a finished run."""

    run_id = ma.fields.Integer(required=True)
    status = ma.fields.String(required=True)
    finished_at = ma.fields.DateTime(format="iso", required=True)
    error = SafeErrorText(allow_none=True)


def _counts() -> ma.fields.Dict:
    return ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True)


class RejectReasonSchema(ma.Schema):
    """How often one reject reason occurred."""

    reason = ma.fields.String(required=True)
    count = ma.fields.Integer(required=True)


class SourceStatsSchema(ma.Schema):
    """One source's records per layer, runs, last outcomes and average duration."""

    source = ma.fields.String(required=True)
    records = _counts()
    runs_by_status = _counts()
    last_success = ma.fields.Nested(RunRefSchema, required=True, allow_none=True)
    last_failure = ma.fields.Nested(RunRefSchema, required=True, allow_none=True)
    average_duration_ms = ma.fields.Float(required=True, allow_none=True,
                                          metadata={"description": "Of succeeded runs"})
    top_reject_reasons = ma.fields.List(ma.fields.Nested(RejectReasonSchema), required=True)
    drift = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True,
                           metadata={"description": "Schema-drift events, mapped and unmapped"})
    anomalies = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                               required=True,
                               metadata={"description": "Anomalies recorded, per kind "
                                                        "(GET /anomalies lists them)"})


class DriftEventSchema(ma.Schema):
    """A change of an upstream's shape."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    run_id = ma.fields.Integer(allow_none=True)
    location = ma.fields.String(required=True)
    kind = ma.fields.String(required=True)
    field = ma.fields.String(required=True)
    observed = ma.fields.String(allow_none=True)
    confidence = ma.fields.Float(required=True)
    mapped = ma.fields.Boolean(required=True)
    detail = ma.fields.String(required=True)
    created_at = ma.fields.DateTime(format="iso", required=True)


class CheckpointSchema(ma.Schema):
    """A source's cursor."""

    source = ma.fields.String(required=True)
    key = ma.fields.String(required=True)
    value = ma.fields.Dict(required=True)
    run_id = ma.fields.Integer(allow_none=True)
    updated_at = ma.fields.DateTime(format="iso", required=True)


class NotificationSchema(ma.Schema):
    """One notification as recorded (the target's name, never its URL)."""

    id = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True)
    event = ma.fields.String(required=True)
    state = ma.fields.String(required=True)
    severity = ma.fields.String(required=True)
    target = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"description": "pending, sent or failed"})
    run_id = ma.fields.Integer(allow_none=True)
    job_id = ma.fields.Integer(allow_none=True)
    detail = SafeErrorText(allow_none=True)
    attempts = ma.fields.Integer(required=True)
    error = SafeErrorText(allow_none=True, metadata={"description": "why the last send failed"})
    created_at = ma.fields.DateTime(required=True)
    sent_at = ma.fields.DateTime(allow_none=True)


class NotificationStatsSchema(ma.Schema):
    """Notifications of the last 24 hours and the newest ones."""

    last_24h = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), required=True,
                              metadata={"description": "status -> notifications created"})
    by_target_24h = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer()),
        required=True, metadata={"description": "target -> status -> count"})
    recent = ma.fields.List(ma.fields.Nested(NotificationSchema), required=True)


class PartitionBytesSchema(ma.Schema):
    """One partition's bytes (table, indexes, TOAST)."""

    partition = ma.fields.String(required=True)
    bytes = ma.fields.Integer(required=True)


class TableBytesSchema(ma.Schema):
    """A table's bytes with its partitions' (a partitioned table: their sum), largest first."""

    table = ma.fields.String(required=True)
    bytes = ma.fields.Integer(required=True)
    partitions = ma.fields.List(ma.fields.Nested(PartitionBytesSchema), required=True)


class StorageSchema(ma.Schema):
    """Storage in sight: catalog figures (no data read) and growth from hourly samples."""

    database_bytes = ma.fields.Integer(required=True, metadata={
        "description": "pg_database_size of the database"})
    budget_bytes = ma.fields.Integer(required=True, metadata={
        "description": "STORAGE_BUDGET_BYTES"})
    alert_days = ma.fields.Integer(required=True, metadata={
        "description": "STORAGE_ALERT_DAYS: fewer days left are notified"})
    bytes_per_quote = ma.fields.Float(allow_none=True, required=True, metadata={
        "description": "bytes of quotes and raw tables per stored quote; null with none"})
    growth_bytes_per_day = ma.fields.Integer(allow_none=True, required=True, metadata={
        "description": "database growth per day over the last day of hourly samples (the "
                       "samples there are while younger); null before two an hour apart"})
    growth_span_hours = ma.fields.Float(allow_none=True, required=True, metadata={
        "description": "hours between the samples growth is measured over"})
    days_left = ma.fields.Float(allow_none=True, required=True, metadata={
        "description": "days until database_bytes reaches budget_bytes at that growth; "
                       "null when not growing, 0 past the budget"})
    tables = ma.fields.List(ma.fields.Nested(TableBytesSchema), required=True)


class StatsSchema(ma.Schema):
    """GET /stats."""

    totals = _counts()
    records = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer()),
        required=True, metadata={"description": "layer -> source -> count (see `layers`)"})
    layers = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.String(), required=True,
        metadata={"description": "layer -> what it counts, per source and in `totals`"})
    runs_by_status = _counts()
    sources = ma.fields.List(ma.fields.Nested(SourceStatsSchema), required=True)
    checkpoints = ma.fields.List(ma.fields.Nested(CheckpointSchema), required=True)
    recent_drift = ma.fields.List(ma.fields.Nested(DriftEventSchema), required=True)
    notifications = ma.fields.Nested(NotificationStatsSchema, required=True)
    storage = ma.fields.Nested(StorageSchema, required=True)
