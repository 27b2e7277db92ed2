"""Typed, frozen settings: the only place that reads environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

SOURCES: tuple[str, ...] = ("coingecko", "coinpaprika", "csv")
# Default freshness objective: a source is stale after this many schedule periods.
FRESHNESS_SCHEDULE_PERIODS = 3

# The one place a setting's default is written, by its variable. Settings has none of its own,
# the quality and anomaly thresholds take theirs from here, and tests/test_config_defaults.py
# checks every default the README and docs/ state. Defaults computed from another setting
# (ETL_TASK_SOFT_TIME_LIMIT, CELERY_VISIBILITY_TIMEOUT, ...) are in load_settings; secrets
# have none.
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    # In the order of the README's table.
    "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/kasparro",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CSV_DIR": "data", "ETL_SOURCES": ",".join(SOURCES), "ETL_SCHEDULE_SECONDS": 300,
    "API_PORT": 8000, "LOG_LEVEL": "INFO",
    "API_READ_RATE_LIMIT": "600/minute", "API_JOBS_RATE_LIMIT": "10/minute",
    "API_AUTH_FAIL_RATE_LIMIT": "20/minute",
    "API_STATEMENT_TIMEOUT_MS": 5000, "API_EXPORT_STATEMENT_TIMEOUT_MS": 25000,
    "STATUS_CACHE_SECONDS": 10, "REPLICA_MAX_LAG_SECONDS": 5.0,
    "COINGECKO_BASE_URL": "https://api.coingecko.com/api/v3",
    "COINPAPRIKA_BASE_URL": "https://api.coinpaprika.com/v1", "COINPAPRIKA_AUTH_SCHEME": "",
    # Free plans: CoinGecko demo ~30 calls/min, CoinPaprika free 20,000 calls/month (we stay
    # far below with 10/min).
    "COINGECKO_RATE_LIMIT": 30, "COINGECKO_RATE_PERIOD_SECONDS": 60,
    "COINPAPRIKA_RATE_LIMIT": 10, "COINPAPRIKA_RATE_PERIOD_SECONDS": 60,
    "HTTP_TIMEOUT_SECONDS": 10.0, "HTTP_MAX_RETRIES": 5, "HTTP_BACKOFF_MAX_SECONDS": 60.0,
    # 25,000 lines: the fastest of 10k/25k/50k in bench/ (fewer commits, better index
    # locality; figures in docs/benchmarks.md).
    "CSV_BATCH_ROWS": 25_000,
    "ETL_TASK_TIME_LIMIT": 900,
    "BROKER_RESTORE_INTERVAL_SECONDS": 10, "BROKER_RESTORE_THROTTLE": 10,
    "RESULT_BACKEND_MAX_RETRIES": 20, "BROKER_KEY_PREFIX": "",
    "ETL_MAX_TASK_ATTEMPTS": 3, "ETL_REAPER_INTERVAL_SECONDS": 60,
    "CONSENSUS_DISAGREEMENT_SHARE": 0.02,
    "NOTIFY_REMINDER_SECONDS": 3600, "NOTIFY_ESCALATE_AFTER": 3, "NOTIFY_TIMEOUT_SECONDS": 5.0,
    "NOTIFY_EVALUATE_SECONDS": 60,
    "BACKFILL_MAX_DAYS": 365, "BACKFILL_CHUNK_DAYS": 90, "BACKFILL_QUOTA_SHARE": 0.5,
    "FAIL_MODE": "raise", "ETL_BATCH_DELAY_SECONDS": 0.0,
    # Quality checks and anomaly rules (docs/quality.md). A quote observed this long before its
    # fetch is stale; CSV rows are historical closes by nature, so the check is off for them.
    "QUALITY_STALE_SECONDS_COINGECKO": 3600, "QUALITY_STALE_SECONDS_COINPAPRIKA": 3600,
    "QUALITY_STALE_SECONDS_CSV": 0,
    "QUALITY_JUMP_FACTOR": 10.0, "QUALITY_OUTLIER_PCT": 10.0, "CONSENSUS_WINDOW_SECONDS": 3600,
    "QUALITY_MCAP_VOLUME_RATIO": 1e8, "QUALITY_MCAP_SUPPLY_FACTOR": 2.0,
    "QUALITY_MAX_MARKET_CAP_USD": 1e13,
    "ANOMALY_LOOKBACK_RUNS": 20, "ANOMALY_MIN_HISTORY": 5, "ANOMALY_RATIO": 5.0,
    "ANOMALY_ROBUST_Z": 5.0, "ANOMALY_FAILURE_STREAK": 3, "ANOMALY_REJECT_RATE_JUMP": 0.1,
})
# The one PostgreSQL driver we ship. SQLAlchemy maps a bare `postgresql://` (and hosting
# services' `postgres://`) to psycopg 3, which is not installed.
DATABASE_DRIVERNAME = "postgresql+psycopg2"
_POSTGRES_SCHEMES = ("postgres", "postgresql")
_POSTGRES_DRIVERS = ("", "psycopg2", "psycopg", "psycopg2cffi")


class ConfigError(ValueError):
    """An environment variable holds a value we cannot use."""


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


def _int(env: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return int(DEFAULTS[name] if default is None else default)
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float | None = None,
           above: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return float(DEFAULTS[name] if default is None else default)
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if above is not None and not value > above:
        raise ConfigError(f"{name} must be above {above:g}, got {value!r}")
    return value


def _share(env: Mapping[str, str], name: str) -> float:
    value = _float(env, name)
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be above 0 and at most 1, got {value!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or str(DEFAULTS[name])
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _quota(env: Mapping[str, str], name: str) -> str:
    """A request quota in the `limits` notation ('600/minute', '10 per 1 second')."""
    from limits import parse  # only here: the rest of this module needs no third party

    value = env.get(name, "").strip() or str(DEFAULTS[name])
    try:
        parse(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a quota such as '600/minute', got {value!r}") from exc
    return value


def _text(env: Mapping[str, str], name: str) -> str:
    return env.get(name, str(DEFAULTS[name]))


def _opt(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def _url_tail(url: str) -> str:
    """The path and query of `url` (`/services/T/B/x?y=z`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


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
    # Replicas of the API's reads, their lag bound; LISTEN's direct primary (docs/scaling.md).
    database_read_urls: tuple[str, ...] = field(repr=False)
    database_listen_url: str = field(repr=False)
    replica_max_lag_seconds: float

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
        tails = [t for t in (_url_tail(u) for u in webhooks) if len(t) >= 8]
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
    time_limit = _int(env, "ETL_TASK_TIME_LIMIT", minimum=1)
    soft_limit = _int(env, "ETL_TASK_SOFT_TIME_LIMIT", max(1, time_limit - 30), 1)
    # The visibility timeout must exceed the hard time limit, otherwise Redis hands a task
    # that is still running to a second worker (see docs/faults.md).
    visibility = _int(env, "CELERY_VISIBILITY_TIMEOUT", time_limit + 300, 1)
    if visibility <= time_limit:
        raise ConfigError("CELERY_VISIBILITY_TIMEOUT must be greater than ETL_TASK_TIME_LIMIT")
    per_source: dict[str, int] = {}
    for source in SOURCES:
        value = _int(env, f"FAIL_AFTER_N_RECORDS_{source.upper()}", -1, -1)
        if value >= 0:
            per_source[source] = value
    fail_all = _int(env, "FAIL_AFTER_N_RECORDS", -1, -1)
    csv_dir = Path(_text(env, "CSV_DIR"))
    enabled = tuple(
        s.strip() for s in _text(env, "ETL_SOURCES").split(",") if s.strip()
    )
    freshness = {source: _int(env, f"FRESHNESS_{source.upper()}_SECONDS", 0, 0)
                 for source in SOURCES}
    unknown = [s for s in enabled if s not in SOURCES]
    if unknown:
        raise ConfigError(f"ETL_SOURCES names unknown sources: {', '.join(unknown)}")
    return Settings(
        database_url=normalize_database_url(env.get("DATABASE_URL")),
        redis_url=_text(env, "REDIS_URL"),
        redis_sentinel_master=_opt(env, "REDIS_SENTINEL_MASTER"),
        redis_sentinel_password=_opt(env, "REDIS_SENTINEL_PASSWORD"),
        api_token=_opt(env, "API_TOKEN"),
        csv_dir=csv_dir,
        asset_aliases_file=Path(
            env.get("ASSET_ALIASES_FILE", str(csv_dir / "asset_aliases.csv"))
        ),
        etl_schedule_seconds=_int(env, "ETL_SCHEDULE_SECONDS", minimum=1),
        api_port=_int(env, "API_PORT", minimum=1),
        log_level=_text(env, "LOG_LEVEL").upper(),
        coingecko_base_url=_text(env, "COINGECKO_BASE_URL").rstrip("/"),
        coingecko_api_key=_opt(env, "COINGECKO_API_KEY"),
        coinpaprika_base_url=_text(env, "COINPAPRIKA_BASE_URL").rstrip("/"),
        coinpaprika_api_key=_opt(env, "COINPAPRIKA_API_KEY"),
        coinpaprika_auth_scheme=_text(env, "COINPAPRIKA_AUTH_SCHEME"),
        coingecko_rate=RateLimit(
            _int(env, "COINGECKO_RATE_LIMIT", minimum=1),
            _int(env, "COINGECKO_RATE_PERIOD_SECONDS", minimum=1),
        ),
        coinpaprika_rate=RateLimit(
            _int(env, "COINPAPRIKA_RATE_LIMIT", minimum=1),
            _int(env, "COINPAPRIKA_RATE_PERIOD_SECONDS", minimum=1),
        ),
        http_timeout_seconds=_float(env, "HTTP_TIMEOUT_SECONDS"),
        http_max_retries=_int(env, "HTTP_MAX_RETRIES"),
        http_backoff_max_seconds=_float(env, "HTTP_BACKOFF_MAX_SECONDS"),
        fail_after_n_records=fail_all if fail_all >= 0 else None,
        fail_after_n_records_by_source=per_source,
        # Fault injection only: 'raise' fails the run cleanly, 'kill' SIGKILLs the worker
        # child (a crash mid-run); a batch delay makes runs slow enough to interrupt.
        fail_mode=_choice(env, "FAIL_MODE", ("raise", "kill")),
        batch_delay_seconds=_float(env, "ETL_BATCH_DELAY_SECONDS"),
        # A batch's lines form one raw block; line ids keep 20 bits for the index
        # (shared.models.RAW_LINE_ID_BITS).
        csv_batch_rows=_int(env, "CSV_BATCH_ROWS", minimum=1, maximum=1 << 20),
        task_soft_time_limit=soft_limit,
        task_time_limit=time_limit,
        visibility_timeout=visibility,
        max_task_attempts=_int(env, "ETL_MAX_TASK_ATTEMPTS", minimum=1),
        # How often a live worker re-queues messages whose consumer died (kombu's sweep runs
        # every interval * throttle seconds); lower it together with the visibility timeout.
        broker_restore_interval=_int(env, "BROKER_RESTORE_INTERVAL_SECONDS", minimum=1),
        broker_restore_throttle=_int(env, "BROKER_RESTORE_THROTTLE", minimum=1),
        # Celery retries a result-backend call (the chord counter a job's send sets, a
        # task's result) this often, 1 s apart, while Redis does not answer.
        result_backend_max_retries=_int(env, "RESULT_BACKEND_MAX_RETRIES"),
        # Prefix of every broker key: lets several stacks (or test sessions) share one Redis
        # database without consuming each other's tasks.
        broker_key_prefix=_text(env, "BROKER_KEY_PREFIX"),
        # A run is only declared lost after a redelivery had its chance (visibility timeout
        # plus kombu's ~100 s restore sweep).
        run_stale_seconds=_int(env, "ETL_RUN_STALE_SECONDS", visibility + 120, 1),
        reaper_interval_seconds=_int(env, "ETL_REAPER_INTERVAL_SECONDS", minimum=1),
        consensus_disagreement_share=_float(env, "CONSENSUS_DISAGREEMENT_SHARE"),
        backfill_max_days=_int(env, "BACKFILL_MAX_DAYS", minimum=1),
        backfill_chunk_days=_int(env, "BACKFILL_CHUNK_DAYS", minimum=1, maximum=3650),
        backfill_quota_share=_share(env, "BACKFILL_QUOTA_SHARE"),
        quality_stale_seconds_by_source={
            source: _int(env, f"QUALITY_STALE_SECONDS_{source.upper()}")
            for source in SOURCES},
        quality_jump_factor=_float(env, "QUALITY_JUMP_FACTOR"),
        quality_outlier_pct=_float(env, "QUALITY_OUTLIER_PCT"),
        quality_mcap_volume_ratio=_float(env, "QUALITY_MCAP_VOLUME_RATIO"),
        quality_mcap_supply_factor=_float(env, "QUALITY_MCAP_SUPPLY_FACTOR"),
        quality_max_market_cap_usd=_float(env, "QUALITY_MAX_MARKET_CAP_USD"),
        consensus_window_seconds=_int(env, "CONSENSUS_WINDOW_SECONDS", minimum=1),
        anomaly_lookback_runs=_int(env, "ANOMALY_LOOKBACK_RUNS", minimum=1),
        anomaly_min_history=_int(env, "ANOMALY_MIN_HISTORY", minimum=1),
        anomaly_ratio=_float(env, "ANOMALY_RATIO"),
        anomaly_robust_z=_float(env, "ANOMALY_ROBUST_Z"),
        anomaly_failure_streak=_int(env, "ANOMALY_FAILURE_STREAK", minimum=1),
        anomaly_reject_rate_jump=_float(env, "ANOMALY_REJECT_RATE_JUMP"),
        enabled_sources=enabled,
        api_read_rate_limit=_quota(env, "API_READ_RATE_LIMIT"),
        api_jobs_rate_limit=_quota(env, "API_JOBS_RATE_LIMIT"),
        api_auth_fail_rate_limit=_quota(env, "API_AUTH_FAIL_RATE_LIMIT"),
        freshness_seconds_by_source={k: v for k, v in freshness.items() if v > 0},
        slack_webhook_url=_opt(env, "SLACK_WEBHOOK_URL"),
        alert_webhook_url=_opt(env, "ALERT_WEBHOOK_URL"),
        apprise_urls=_opt(env, "APPRISE_URLS"),
        notify_reminder_seconds=_int(env, "NOTIFY_REMINDER_SECONDS", minimum=1),
        notify_escalate_after=_int(env, "NOTIFY_ESCALATE_AFTER", minimum=1),
        notify_timeout_seconds=_float(env, "NOTIFY_TIMEOUT_SECONDS"),
        notify_evaluate_seconds=_int(env, "NOTIFY_EVALUATE_SECONDS", minimum=1),
        # PostgreSQL takes statement_timeout up to INT_MAX milliseconds.
        api_statement_timeout_ms=_int(env, "API_STATEMENT_TIMEOUT_MS", maximum=2**31 - 1),
        api_export_statement_timeout_ms=_int(env, "API_EXPORT_STATEMENT_TIMEOUT_MS",
                                             maximum=2**31 - 1),
        status_cache_seconds=_int(env, "STATUS_CACHE_SECONDS"),
        database_read_urls=tuple(normalize_database_url(url, "DATABASE_READ_URLS") for url
                                 in env.get("DATABASE_READ_URLS", "").split(",") if url.strip()),
        database_listen_url=normalize_database_url(
            env.get("DATABASE_LISTEN_URL") or env.get("DATABASE_URL"), "DATABASE_LISTEN_URL"),
        replica_max_lag_seconds=_float(env, "REPLICA_MAX_LAG_SECONDS", above=0),
    )


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
