"""var/stack.env: what the launcher writes for the make targets, and what it leaves out."""
from __future__ import annotations

import subprocess
from pathlib import Path

from scripts.stackenv import read_stack_env, stack_env_values, write_stack_env

CHILD_ENV = {
    "DATABASE_URL": "postgresql+psycopg2://kasparro:s3cret-pw@db.internal:5432/kasparro"
                    "?sslmode=require",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "BROKER_KEY_PREFIX": "stack-a:",
    "CSV_DIR": "data",
    "API_TOKEN": "tok-should-not-be-written",
    "COINGECKO_API_KEY": "cg-should-not-be-written",
    "COINGECKO_BASE_URL": "http://127.0.0.1:40001/api/v3",
    "PATH": "/usr/bin",
}


def test_values_keep_the_stack_and_drop_every_secret() -> None:
    values = stack_env_values(CHILD_ENV, "http://127.0.0.1:8000")
    assert values["DATABASE_URL"] == ("postgresql+psycopg2://kasparro@db.internal:5432/kasparro"
                                      "?sslmode=require")
    assert values["REDIS_URL"] == CHILD_ENV["REDIS_URL"]
    assert values["BROKER_KEY_PREFIX"] == "stack-a:"
    assert Path(values["CSV_DIR"]).is_absolute() and values["CSV_DIR"].endswith("/data")
    assert values["COINGECKO_BASE_URL"] == CHILD_ENV["COINGECKO_BASE_URL"]
    assert values["API_URL"] == "http://127.0.0.1:8000" and values["API_PORT"] == "8000"
    assert "PATH" not in values and "COINPAPRIKA_BASE_URL" not in values


def test_file_is_private_and_sourceable(tmp_path: Path) -> None:
    path = write_stack_env(tmp_path, {**CHILD_ENV, "BROKER_KEY_PREFIX": "it's a:prefix"},
                           "http://127.0.0.1:8123")
    assert path == tmp_path / "stack.env"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    for secret in ("s3cret-pw", "tok-should-not-be-written", "cg-should-not-be-written"):
        assert secret not in text
    assert read_stack_env(path)["BROKER_KEY_PREFIX"] == "it's a:prefix"  # quoted for sh
    shell = subprocess.run(["sh", "-c", f'set -a; . "{path}"; echo "$BROKER_KEY_PREFIX"'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout == "it's a:prefix\n"
    # Rewritten in place for a restarted stack: still 600, new values.
    path.chmod(0o644)
    write_stack_env(tmp_path, CHILD_ENV, "http://127.0.0.1:9000")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_stack_env(path)["API_URL"] == "http://127.0.0.1:9000"
