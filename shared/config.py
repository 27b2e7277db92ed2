"""Typed, frozen settings: the only place that reads environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from shared.config_values import DEFAULTS as DEFAULTS
from shared.config_values import SOURCES as SOURCES
from shared.config_values import ConfigError as ConfigError
from shared.config_values import (choice_value, float_value, int_value, opt_value, quota_value,
                                  share_value, text_value, url_tail)

# Default freshness objective: a source is stale after this many schedule periods.
FRESHNESS_SCHEDULE_PERIODS = 3

# The one PostgreSQL driver we ship. SQLAlchemy maps a bare `postgresql://` (and hosting
# services' `postgres://`) to psycopg 3, which is not installed.
DATABASE_DRIVERNAME = "postgresql+psycopg2"
_POSTGRES_SCHEMES = ("postgres", "postgresql")
_POSTGRES_DRIVERS = ("", "psycopg2", "psycopg", "psycopg2cffi")


def normalize_database_url(raw: str | None, name: str = "DATABASE_URL") -> str:
    """`raw` (any common PostgreSQL URL form, query kept) as a psycopg2 URL; errors name `name`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = (raw or "").strip() or DEFAULTS["DATABASE_URL"]
    scheme, sep, _rest = text.partition("://")
    backend, _, driver = scheme.lower().partition("+")
    if not sep or backend not in _POSTGRES_SCHEMES or driver not in _POSTGRES_DRIVERS:
        # Only the scheme is echoed: the rest may hold a password.
        got = f"scheme {scheme!r}" if sep else "no scheme://"
        raise ConfigError(f"{name} must be a PostgreSQL URL (postgres://, postgresql:// or "
                          f"postgresql+psycopg2://), got {got}")
    try:
        url = make_url(DATABASE_DRIVERNAME + "://" + _rest)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{name} is not a valid URL (user:password@host:port/db)") from None
    return url.render_as_string(hide_password=False)


def libpq_params(url: str) -> dict[str, str]:
    """psycopg2.connect() keywords for `url` (any form normalize_database_url takes)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalize_database_url(url))
    params = {k: str(v) for k, v in parsed.translate_connect_args(
        username="user", database="dbname").items()}
    # Query parameters (sslmode, connect_timeout, host=/socket/dir, ...) are libpq keywords;
    # a repeated one keeps its last value, as libpq does.
    for key, value in parsed.query.items():
        params[key] = value[-1] if isinstance(value, tuple) else value
    return params


@dataclass(frozen=True)
class RateLimit:
    """A request quota: `requests` per `period_seconds`, shared by the whole cluster."""

    requests: int
    period_seconds: int

    def as_limits_string(self) -> str:
        """The quota in the `limits` library's notation, e.g. '30 per 60 second'."""
        return f"{self.requests} per {self.period_seconds} second"


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the service, read once from the environment."""

    database_url: str
    redis_url: str
    # Sentinel (REDIS_URL = sentinel://...;...): the master's name, the Sentinels' password.
    redis_sentinel_master: str | None
    redis_sentinel_password: str | None = field(repr=False)
    api_token: str | None = field(repr=False)
    csv_dir: Path
    asset_aliases_file: Path
    etl_schedule_seconds: int
    api_port: int
    log_level: str
    coingecko_base_url: str
    coingecko_api_key: str | None = field(repr=False)
    coinpaprika_base_url: str
    coinpaprika_api_key: str | None = field(repr=False)
    coinpaprika_auth_scheme: str
    coingecko_rate: RateLimit
    coinpaprika_rate: RateLimit
    http_timeout_seconds: float
    http_max_retries: int
    http_backoff_max_seconds: float
    fail_after_n_records: int | None
    fail_after_n_records_by_source: dict[str, int]
    fail_mode: str
    batch_delay_seconds: float
    csv_batch_rows: int
    task_soft_time_limit: int
    task_time_limit: int
    visibility_timeout: int
    max_task_attempts: int
    broker_restore_interval: int
    broker_key_prefix: str
    broker_restore_throttle: int
    result_backend_max_retries: int
    run_stale_seconds: int
    reaper_interval_seconds: int
    consensus_disagreement_share: float
    # Quality checks (shared.quality.checks, docs/quality.md): stale limit per source in seconds
    # (QUALITY_STALE_SECONDS_<SOURCE>, 0 = off), jump factor, outlier distance in percent,
    # market cap / volume ratio, market cap vs price x supply factor, largest market cap.
    quality_stale_seconds_by_source: dict[str, int]
    quality_jump_factor: float
    quality_outlier_pct: float
    quality_mcap_volume_ratio: float
    quality_mcap_supply_factor: float
    quality_max_market_cap_usd: float
    # Consensus takes quotes observed within this many seconds of the freshest
    # (shared.quality.consensus).
    consensus_window_seconds: int
    # Run anomaly rules (shared.quality.anomalies): runs looked back, runs needed, ratio and
    # robust z
    # both required, failed runs in a row, reject-rate rise.
    anomaly_lookback_runs: int
    anomaly_min_history: int
    anomaly_ratio: float
    anomaly_robust_z: float
    anomaly_failure_streak: int
    anomaly_reject_rate_jump: float
    enabled_sources: tuple[str, ...]
    # API request quotas per client address, in the `limits` notation ('600/minute').
    api_read_rate_limit: str
    api_jobs_rate_limit: str
    api_auth_fail_rate_limit: str
    # Freshness objective per source (FRESHNESS_<SOURCE>_SECONDS): seconds since its last
    # success after which the source is stale (shared.queries.freshness).
    freshness_seconds_by_source: dict[str, int]
    # Notifications (shared.notify): webhook URLs are secrets; reminder and escalation policy.
    slack_webhook_url: str | None = field(repr=False)
    alert_webhook_url: str | None = field(repr=False)
    # Further targets through apprise (space- or comma-separated apprise URLs).
    apprise_urls: str | None = field(repr=False)
    notify_reminder_seconds: int
    notify_escalate_after: int
    notify_timeout_seconds: float
    # How often beat asks for an evaluation (staleness has no run to trigger it).
    notify_evaluate_seconds: int
    # Backfills (shared.backfill.request*): the furthest back a request may reach, the days per
    # chunk (one upstream request), and the share of the source's quota a backfill may take.
    backfill_max_days: int
    backfill_chunk_days: int
    backfill_quota_share: float
    # statement_timeout of the API's reads (api/http/read_timeout.py), in milliseconds, 0 = none:
    # every transaction of a GET, and the longer one of a CSV/NDJSON export's streamed read.
    # Both under gunicorn's 30 s worker timeout, which kills the worker of a longer request:
    # the client gets a 503 rather than a dropped connection.
    api_statement_timeout_ms: int
    api_export_statement_timeout_ms: int
    # A status page is built at most once per this many seconds per API process and data
    # version (api/resources/status.py); 0 = every request.
    status_cache_seconds: int
    # Storage in sight (shared.storage.usage): the disk budget and the days left under which
    # the notification targets are told.
    storage_budget_bytes: int
    storage_alert_days: int
    # Replicas of the API's reads, their lag bound; LISTEN's direct primary (docs/scaling.md).
    database_read_urls: tuple[str, ...] = field(repr=False)
    database_listen_url: str = field(repr=False)
    replica_max_lag_seconds: float
    # Retention (shared.storage.retention, docs/storage.md), in days, None = keep: raw blocks'
    # partitions dropped past raw_retention_days; quotes folded into hourly rollups past
    # quotes_full_resolution_days, hourly rollups into daily ones past quotes_hourly_days.
    raw_retention_days: int | None
    quotes_full_resolution_days: int | None
    quotes_hourly_days: int | None

    def freshness_objective(self, source: str) -> int:
        """Seconds after its last success at which `source` is stale (default 3 schedules)."""
        return self.freshness_seconds_by_source.get(
            source, FRESHNESS_SCHEDULE_PERIODS * self.etl_schedule_seconds)

    def fail_after_for(self, source: str) -> int | None:
        """The FAIL_AFTER_N_RECORDS limit in force for `source` (per-source form wins)."""
        return self.fail_after_n_records_by_source.get(source, self.fail_after_n_records)

    def redacted_secrets(self) -> tuple[str, ...]:
        """Secret values that must never appear in logs or error bodies."""
        webhooks = [u for u in (self.slack_webhook_url, self.alert_webhook_url) if u]
        webhooks += (self.apprise_urls or "").replace(",", " ").split()
        # A webhook's path and query are its secret too (request logs show them alone).
        tails = [t for t in (url_tail(u) for u in webhooks) if len(t) >= 8]
        return tuple(
            s for s in (self.api_token, self.coingecko_api_key, self.coinpaprika_api_key,
                        self.redis_sentinel_password, *webhooks, *tails) if s
        )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: the process environment).

    Long on purpose: one read per setting, in the order of the Settings fields, is easier to
    check against the README's configuration table than reads scattered over helpers.
    """
    env = os.environ if env is None else env
    time_limit = int_value(env, "ETL_TASK_TIME_LIMIT", minimum=1)
    soft_limit = int_value(env, "ETL_TASK_SOFT_TIME_LIMIT", max(1, time_limit - 30), 1)
    # The visibility timeout must exceed the hard time limit, otherwise Redis hands a task
    # that is still running to a second worker (see docs/faults.md).
    visibility = int_value(env, "CELERY_VISIBILITY_TIMEOUT", time_limit + 300, 1)
    if visibility <= time_limit:
        raise ConfigError("CELERY_VISIBILITY_TIMEOUT must be greater than ETL_TASK_TIME_LIMIT")
    per_source: dict[str, int] = {}
    for source in SOURCES:
        value = int_value(env, f"FAIL_AFTER_N_RECORDS_{source.upper()}", -1, -1)
        if value >= 0:
            per_source[source] = value
    fail_all = int_value(env, "FAIL_AFTER_N_RECORDS", -1, -1)
    csv_dir = Path(text_value(env, "CSV_DIR"))
    enabled = tuple(
        s.strip() for s in text_value(env, "ETL_SOURCES").split(",") if s.strip()
    )
    freshness = {source: int_value(env, f"FRESHNESS_{source.upper()}_SECONDS", 0, 0)
                 for source in SOURCES}
    full_days, hourly_days = (_days(env, "QUOTES_FULL_RESOLUTION_DAYS"),
                              _days(env, "QUOTES_HOURLY_DAYS"))
    # Hourly rollups are made from the full rows, so they must outlive them.
    if hourly_days is not None and (full_days is None or hourly_days <= full_days):
        raise ConfigError("QUOTES_HOURLY_DAYS must be greater than QUOTES_FULL_RESOLUTION_DAYS "
                          "(and needs it set)")
    unknown = [s for s in enabled if s not in SOURCES]
    if unknown:
        raise ConfigError(f"ETL_SOURCES names unknown sources: {', '.join(unknown)}")
    return Settings(
        database_url=normalize_database_url(env.get("DATABASE_URL")),
        redis_url=text_value(env, "REDIS_URL"),
        redis_sentinel_master=opt_value(env, "REDIS_SENTINEL_MASTER"),
        redis_sentinel_password=opt_value(env, "REDIS_SENTINEL_PASSWORD"),
        api_token=opt_value(env, "API_TOKEN"),
        csv_dir=csv_dir,
        asset_aliases_file=Path(
            env.get("ASSET_ALIASES_FILE", str(csv_dir / "asset_aliases.csv"))
        ),
        etl_schedule_seconds=int_value(env, "ETL_SCHEDULE_SECONDS", minimum=1),
        api_port=int_value(env, "API_PORT", minimum=1),
        log_level=text_value(env, "LOG_LEVEL").upper(),
        coingecko_base_url=text_value(env, "COINGECKO_BASE_URL").rstrip("/"),
        coingecko_api_key=opt_value(env, "COINGECKO_API_KEY"),
        coinpaprika_base_url=text_value(env, "COINPAPRIKA_BASE_URL").rstrip("/"),
        coinpaprika_api_key=opt_value(env, "COINPAPRIKA_API_KEY"),
        coinpaprika_auth_scheme=text_value(env, "COINPAPRIKA_AUTH_SCHEME"),
        coingecko_rate=RateLimit(
            int_value(env, "COINGECKO_RATE_LIMIT", minimum=1),
            int_value(env, "COINGECKO_RATE_PERIOD_SECONDS", minimum=1),
        ),
        coinpaprika_rate=RateLimit(
            int_value(env, "COINPAPRIKA_RATE_LIMIT", minimum=1),
            int_value(env, "COINPAPRIKA_RATE_PERIOD_SECONDS", minimum=1),
        ),
        http_timeout_seconds=float_value(env, "HTTP_TIMEOUT_SECONDS"),
        http_max_retries=int_value(env, "HTTP_MAX_RETRIES"),
        http_backoff_max_seconds=float_value(env, "HTTP_BACKOFF_MAX_SECONDS"),
        fail_after_n_records=fail_all if fail_all >= 0 else None,
        fail_after_n_records_by_source=per_source,
        # Fault injection only: 'raise' fails the run cleanly, 'kill' SIGKILLs the worker
        # child (a crash mid-run); a batch delay makes runs slow enough to interrupt.
        fail_mode=choice_value(env, "FAIL_MODE", ("raise", "kill")),
        batch_delay_seconds=float_value(env, "ETL_BATCH_DELAY_SECONDS"),
        # A batch's lines form one raw block; line ids keep 20 bits for the index
        # (shared.models.RAW_LINE_ID_BITS).
        csv_batch_rows=int_value(env, "CSV_BATCH_ROWS", minimum=1, maximum=1 << 20),
        task_soft_time_limit=soft_limit,
        task_time_limit=time_limit,
        visibility_timeout=visibility,
        max_task_attempts=int_value(env, "ETL_MAX_TASK_ATTEMPTS", minimum=1),
        # How often a live worker re-queues messages whose consumer died (kombu's sweep runs
        # every interval * throttle seconds); lower it together with the visibility timeout.
        broker_restore_interval=int_value(env, "BROKER_RESTORE_INTERVAL_SECONDS", minimum=1),
        broker_restore_throttle=int_value(env, "BROKER_RESTORE_THROTTLE", minimum=1),
        # Celery retries a result-backend call (the chord counter a job's send sets, a
        # task's result) this often, 1 s apart, while Redis does not answer.
        result_backend_max_retries=int_value(env, "RESULT_BACKEND_MAX_RETRIES"),
        # Prefix of every broker key: lets several stacks (or test sessions) share one Redis
        # database without consuming each other's tasks.
        broker_key_prefix=text_value(env, "BROKER_KEY_PREFIX"),
        # A run is only declared lost after a redelivery had its chance (visibility timeout
        # plus kombu's ~100 s restore sweep).
        run_stale_seconds=int_value(env, "ETL_RUN_STALE_SECONDS", visibility + 120, 1),
        reaper_interval_seconds=int_value(env, "ETL_REAPER_INTERVAL_SECONDS", minimum=1),
        consensus_disagreement_share=float_value(env, "CONSENSUS_DISAGREEMENT_SHARE"),
        backfill_max_days=int_value(env, "BACKFILL_MAX_DAYS", minimum=1),
        backfill_chunk_days=int_value(env, "BACKFILL_CHUNK_DAYS", minimum=1, maximum=3650),
        backfill_quota_share=share_value(env, "BACKFILL_QUOTA_SHARE"),
        quality_stale_seconds_by_source={
            source: int_value(env, f"QUALITY_STALE_SECONDS_{source.upper()}")
            for source in SOURCES},
        quality_jump_factor=float_value(env, "QUALITY_JUMP_FACTOR"),
        quality_outlier_pct=float_value(env, "QUALITY_OUTLIER_PCT"),
        quality_mcap_volume_ratio=float_value(env, "QUALITY_MCAP_VOLUME_RATIO"),
        quality_mcap_supply_factor=float_value(env, "QUALITY_MCAP_SUPPLY_FACTOR"),
        quality_max_market_cap_usd=float_value(env, "QUALITY_MAX_MARKET_CAP_USD"),
        consensus_window_seconds=int_value(env, "CONSENSUS_WINDOW_SECONDS", minimum=1),
        anomaly_lookback_runs=int_value(env, "ANOMALY_LOOKBACK_RUNS", minimum=1),
        anomaly_min_history=int_value(env, "ANOMALY_MIN_HISTORY", minimum=1),
        anomaly_ratio=float_value(env, "ANOMALY_RATIO"),
        anomaly_robust_z=float_value(env, "ANOMALY_ROBUST_Z"),
        anomaly_failure_streak=int_value(env, "ANOMALY_FAILURE_STREAK", minimum=1),
        anomaly_reject_rate_jump=float_value(env, "ANOMALY_REJECT_RATE_JUMP"),
        enabled_sources=enabled,
        api_read_rate_limit=quota_value(env, "API_READ_RATE_LIMIT"),
        api_jobs_rate_limit=quota_value(env, "API_JOBS_RATE_LIMIT"),
        api_auth_fail_rate_limit=quota_value(env, "API_AUTH_FAIL_RATE_LIMIT"),
        freshness_seconds_by_source={k: v for k, v in freshness.items() if v > 0},
        slack_webhook_url=opt_value(env, "SLACK_WEBHOOK_URL"),
        alert_webhook_url=opt_value(env, "ALERT_WEBHOOK_URL"),
        apprise_urls=opt_value(env, "APPRISE_URLS"),
        notify_reminder_seconds=int_value(env, "NOTIFY_REMINDER_SECONDS", minimum=1),
        notify_escalate_after=int_value(env, "NOTIFY_ESCALATE_AFTER", minimum=1),
        notify_timeout_seconds=float_value(env, "NOTIFY_TIMEOUT_SECONDS"),
        notify_evaluate_seconds=int_value(env, "NOTIFY_EVALUATE_SECONDS", minimum=1),
        # PostgreSQL takes statement_timeout up to INT_MAX milliseconds.
        api_statement_timeout_ms=int_value(env, "API_STATEMENT_TIMEOUT_MS", maximum=2**31 - 1),
        api_export_statement_timeout_ms=int_value(env, "API_EXPORT_STATEMENT_TIMEOUT_MS",
                                                  maximum=2**31 - 1),
        status_cache_seconds=int_value(env, "STATUS_CACHE_SECONDS"),
        storage_budget_bytes=int_value(env, "STORAGE_BUDGET_BYTES", minimum=1),
        storage_alert_days=int_value(env, "STORAGE_ALERT_DAYS"),
        database_read_urls=tuple(normalize_database_url(url, "DATABASE_READ_URLS") for url
                                 in env.get("DATABASE_READ_URLS", "").split(",") if url.strip()),
        database_listen_url=normalize_database_url(
            env.get("DATABASE_LISTEN_URL") or env.get("DATABASE_URL"), "DATABASE_LISTEN_URL"),
        replica_max_lag_seconds=float_value(env, "REPLICA_MAX_LAG_SECONDS", above=0),
        raw_retention_days=_days(env, "RAW_RETENTION_DAYS"),
        quotes_full_resolution_days=full_days,
        quotes_hourly_days=hourly_days,
    )


def _days(env: Mapping[str, str], name: str) -> int | None:
    """A number of days >= 1, or None (keep everything) when unset or blank."""
    return int_value(env, name, 0, 1) if opt_value(env, name) else None


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide Settings, loaded on first use."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def reset_settings() -> None:
    """Forget the cached Settings (tests change the environment between cases)."""
    global _settings
    _settings = None
