"""var/stack.env and the banner: what the launcher writes and prints, never a secret."""
from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from scripts.stackenv import (
    FROM_ENV, ROOT, SECRET_ENV, banner, read_stack_env, stack_env_values, without_password,
    write_stack_env,
)
from shared.config import Settings

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


def test_urls_lose_their_password_and_stack_env_names_what_the_caller_supplies(
    tmp_path: Path,
) -> None:
    env = {**CHILD_ENV, "REDIS_URL": "rediss://:r3dis-pw@cache.internal:6380/0?ssl=true"}
    values = stack_env_values(env, "http://127.0.0.1:8000", token_from_env=True)
    assert values["REDIS_URL"] == "rediss://cache.internal:6380/0?ssl=true"
    assert values[FROM_ENV] == "API_TOKEN DATABASE_URL REDIS_URL"
    # Generated token, password-less URLs: nothing to take from the caller.
    plain = {**CHILD_ENV, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/k"}
    assert FROM_ENV not in stack_env_values(plain, "http://127.0.0.1:8000")
    text = write_stack_env(tmp_path, env, "http://127.0.0.1:8000", token_from_env=True
                           ).read_text()
    assert "r3dis-pw" not in text and "s3cret-pw" not in text


@pytest.mark.parametrize("url, shown", [
    ("redis://:pw-1@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://user:pw-1@h:1/2?ssl_cert_reqs=none", "redis://user@h:1/2?ssl_cert_reqs=none"),
    ("unix:///tmp/redis.sock?db=1&password=pw-1", "unix:///tmp/redis.sock?db=1"),
    ("postgresql+psycopg2://u:pw-1@h/d?password=pw-1&sslmode=require",
     "postgresql+psycopg2://u@h/d?sslmode=require"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # untouched, byte for byte
    # A Sentinel list (shared.redis_client): each URL of it, the list kept.
    ("sentinel://:pw-1@10.0.0.1:26379/2;sentinel://10.0.0.2:26379",
     "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26379"),
    ("pw-1 is not a URL", "<not shown: not a URL>"),
])
def test_without_password(url: str, shown: str) -> None:
    assert without_password(url) == shown


def test_secret_env_is_every_secret_setting() -> None:
    # Settings marks a secret with repr=False; each is read from its field's name in capitals.
    assert {f.name.upper() for f in fields(Settings) if not f.repr} == set(SECRET_ENV)


def test_banner_says_where_the_token_is_and_never_shows_a_secret(tmp_path: Path) -> None:
    env = {**CHILD_ENV, "REDIS_URL": "redis://:r3dis-pw@127.0.0.1:6379/0",
           "SLACK_WEBHOOK_URL": "https://hooks.example/services/T/B/hook-should-not-show"}
    args = ("http://127.0.0.1:8000", tmp_path / "log", tmp_path / "stack.env", env)
    given = banner(*args, token_file=None)
    generated = banner(*args, token_file=tmp_path / "api_token")
    for text in (given, generated):
        for secret in ("s3cret-pw", "r3dis-pw", "tok-should-not-be-written",
                       "cg-should-not-be-written", "hook-should-not-show"):
            assert secret not in text
        assert "REDIS_URL=redis://127.0.0.1:6379/0  (password not shown)" in text
        assert "secrets COINGECKO_API_KEY, SLACK_WEBHOOK_URL set (values never shown)" in text
    assert "API_TOKEN from the environment, written nowhere" in given
    assert f'Authorization: Bearer $(cat {tmp_path / "api_token"})' in generated


def _load(stack_env: Path, caller: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Source scripts/with_stack_env.sh in sh with `caller` as the environment; print the env."""
    script = (f'stack_env="{stack_env}"; . "{ROOT}/scripts/with_stack_env.sh"; '
              'echo "db=$DATABASE_URL"; echo "redis=$REDIS_URL"; echo "token=${API_TOKEN-}"')
    return subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", **caller},
                          capture_output=True, text=True, check=True)


def test_make_targets_take_left_out_secrets_from_the_caller(tmp_path: Path) -> None:
    env = {**CHILD_ENV, "REDIS_URL": "redis://:r3dis-pw@127.0.0.1:6379/0"}
    path = write_stack_env(tmp_path, env, "http://127.0.0.1:8000", token_from_env=True)
    (tmp_path / "api_token").write_text("tok-in-var-api-token\n")
    caller = {"DATABASE_URL": CHILD_ENV["DATABASE_URL"], "REDIS_URL": env["REDIS_URL"],
              "API_TOKEN": "tok-of-the-caller"}
    both = _load(path, caller)
    assert both.stdout.splitlines() == [f"db={caller['DATABASE_URL']}",
                                        f"redis={env['REDIS_URL']}", "token=tok-of-the-caller"]
    alone = _load(path, {})
    # Its token came from its environment: a file left by an earlier run is not it.
    assert alone.stdout.splitlines() == [
        "db=postgresql+psycopg2://kasparro@db.internal:5432/kasparro?sslmode=require",
        "redis=redis://127.0.0.1:6379/0", "token="]
    assert "export REDIS_URL" in alone.stderr and "export API_TOKEN" in alone.stderr
    # The stack's own URLs had no password: they win over the caller's, its token file is read.
    plain = {**CHILD_ENV, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/k"}
    path = write_stack_env(tmp_path, plain, "http://127.0.0.1:8000")
    mine = _load(path, {"DATABASE_URL": "postgresql://other@elsewhere/x"})
    assert mine.stdout.splitlines() == [f"db={plain['DATABASE_URL']}",
                                        "redis=redis://127.0.0.1:6379/0",
                                        "token=tok-in-var-api-token"]
    assert mine.stderr == ""
