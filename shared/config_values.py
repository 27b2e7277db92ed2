"""Settings' defaults and the parsing of one environment value (shared.config uses both)."""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

SOURCES: tuple[str, ...] = ("coingecko", "coinpaprika", "csv")

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
    # The disk budget (100 GB: at the measured ~240 B per quote, weeks of the default
    # schedule plus the CSV history, docs/storage.md); two weeks' warning leaves time to add
    # disk or shorten retention, and is more than one weekly partition's growth.
    "STORAGE_BUDGET_BYTES": 100_000_000_000, "STORAGE_ALERT_DAYS": 14,
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


class ConfigError(ValueError):
    """An environment variable holds a value we cannot use."""


def int_value(env: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0,
              maximum: int | None = None) -> int:
    """An integer setting within [minimum, maximum]; DEFAULTS[name] when unset."""
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


def float_value(env: Mapping[str, str], name: str, default: float | None = None,
                above: float | None = None) -> float:
    """A number setting, above `above` if given; DEFAULTS[name] when unset."""
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


def share_value(env: Mapping[str, str], name: str) -> float:
    """A share in (0, 1]."""
    value = float_value(env, name)
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be above 0 and at most 1, got {value!r}")
    return value


def choice_value(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive)."""
    value = env.get(name, "").strip().lower() or str(DEFAULTS[name])
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def quota_value(env: Mapping[str, str], name: str) -> str:
    """A request quota in the `limits` notation ('600/minute', '10 per 1 second')."""
    from limits import parse  # only here: the rest of this module needs no third party

    value = env.get(name, "").strip() or str(DEFAULTS[name])
    try:
        parse(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a quota such as '600/minute', got {value!r}") from exc
    return value


def text_value(env: Mapping[str, str], name: str) -> str:
    """The text as set (an empty value stays empty); DEFAULTS[name] when unset."""
    return env.get(name, str(DEFAULTS[name]))


def opt_value(env: Mapping[str, str], name: str) -> str | None:
    """The text, or None when unset or blank."""
    return env.get(name, "").strip() or None


def url_tail(url: str) -> str:
    """The path and query of `url` (`/services/T/B/x?y=z`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")
