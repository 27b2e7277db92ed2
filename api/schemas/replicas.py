"""Response schema of GET /health's replicas check (api.replicas)."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

# api.replicas' states (not imported: api.replicas stands on api.http, which uses schemas).
REPLICA_STATES = ("ok", "lagging", "down", "not_a_replica", "unchecked")


class ReplicaStateSchema(ma.Schema):
    """One read replica as this API process last saw it."""

    name = ma.fields.String(required=True, metadata={"example": "10.0.0.12:5432/kasparro"})
    in_use = ma.fields.Boolean(required=True, metadata={
        "description": "Whether this process sends reads to it now"})
    state = ma.fields.String(required=True, validate=validate.OneOf(REPLICA_STATES))
    lag_seconds = ma.fields.Float(allow_none=True, metadata={
        "description": "Replay lag in seconds, at most: as last checked plus the time since "
                       "(null: unknown)"})
    checked_seconds_ago = ma.fields.Float(allow_none=True)
    error = ma.fields.String(allow_none=True, metadata={
        "description": "The error class of the last failure"})


class ReplicasCheckSchema(ma.Schema):
    """Every replica of DATABASE_READ_URLS (ok when each one is in use)."""

    ok = ma.fields.Boolean(required=True)
    latency_ms = ma.fields.Float()
    error = ma.fields.String()
    max_lag_seconds = ma.fields.Float()
    replicas = ma.fields.List(ma.fields.Nested(ReplicaStateSchema))
