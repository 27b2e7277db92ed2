"""REDIS_URL's forms (one server, Sentinels) read by shared.redis_client, the one Redis owner."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from shared import redis_client
from shared.celery_config import celery_config
from shared.config import ConfigError, load_settings
from shared.redis_client import RedisTarget, parse_target

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "shared" / "redis_client.py"
MASTER = "mymaster"


def test_a_plain_url_is_kept_as_given() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/2?ssl_cert_reqs=none",
                "unix:///tmp/redis.sock?db=1"):
        found = parse_target(url)
        assert found == RedisTarget(url=url) and not found.is_sentinel
    assert parse_target("redis://:pw@h:1/3").describe() == "redis://h:1/3"


@pytest.mark.parametrize("url, sentinels, db, password", [
    ("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3",
     (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)), 0, None),
    ("sentinel://10.0.0.1:26379/4;sentinel://10.0.0.2:26379",
     (("10.0.0.1", 26379), ("10.0.0.2", 26379)), 4, None),
    # The master's password on the first, URL-quoted; spaces around ';' and a trailing one.
    ("sentinel://:p%40ss%3Bw@s1:1/2 ; sentinel://s2:2;", (("s1", 1), ("s2", 2)), 2, "p@ss;w"),
    ("sentinel://s1:1", (("s1", 1),), 0, None),
])
def test_sentinel_forms(url: str, sentinels: tuple[tuple[str, int], ...], db: int,
                        password: str | None) -> None:
    found = parse_target(url, MASTER, "sentinel-pw")
    assert found.is_sentinel
    assert (found.sentinels, found.db, found.password, found.master) == (
        sentinels, db, password, MASTER)
    assert found.sentinel_password == "sentinel-pw"
    # What logs and errors may show: hosts, master and database, never a password.
    assert "pw" not in found.describe() and "p@ss" not in repr(found)


@pytest.mark.parametrize("url, master, says", [
    ("sentinel://s1:1;sentinel://s2:2", None, "set REDIS_SENTINEL_MASTER"),
    ("redis://127.0.0.1:6379/0", MASTER, "names no Sentinel"),
    ("sentinel://s1:1;sentinel://s2:2/3", MASTER, "only the first Sentinel may carry a /db"),
    ("sentinel://s1:1/x", MASTER, "only the first Sentinel may carry a /db"),
    ("sentinel://s1:1;sentinel://:secret-pw@s2:2", MASTER, "only the first Sentinel may carry"),
    ("sentinel://s1:1;redis://s2:2", MASTER, "Sentinel 2 is not sentinel://host:port"),
    ("sentinel://s1:99999", MASTER, "Sentinel 1 has no valid port"),
    ("sentinel://s1:1?socket_timeout=1", MASTER, "has a query"),
    ("sentinel://;", MASTER, "not sentinel://host:port"),
    ("http://secret-pw@h:1", None, "got scheme 'http'"),
    ("localhost:6379", None, "got no scheme://"),
])
def test_bad_urls_fail_naming_the_setting_and_never_the_password(url: str, master: str | None,
                                                                 says: str) -> None:
    with pytest.raises(ConfigError, match="REDIS") as caught:
        parse_target(url, master)
    assert says in str(caught.value) and "secret-pw" not in str(caught.value)


def test_settings_read_the_master_and_the_sentinel_password() -> None:
    env = {"REDIS_URL": "sentinel://:m-pw@s1:26379/1;sentinel://s2:26379",
           "REDIS_SENTINEL_MASTER": MASTER, "REDIS_SENTINEL_PASSWORD": "s-pw"}
    settings = load_settings(env)
    found = redis_client.target(settings)
    assert (found.master, found.db, found.password, found.sentinel_password) == (
        MASTER, 1, "m-pw", "s-pw")
    assert "s-pw" in settings.redacted_secrets() and "s-pw" not in repr(settings)
    plain = load_settings({})
    assert plain.redis_sentinel_master is None and plain.redis_sentinel_password is None
    assert not redis_client.target(plain).is_sentinel


def test_celery_gets_sentinel_urls_and_the_master_name_in_both_transport_options() -> None:
    settings = load_settings({
        "REDIS_URL": "sentinel://:m%2Fpw@s1:1/3;sentinel://s2:2;sentinel://s3:3",
        "REDIS_SENTINEL_MASTER": MASTER, "REDIS_SENTINEL_PASSWORD": "s-pw",
        "BROKER_KEY_PREFIX": "p:"})
    config = celery_config(settings)
    url = "sentinel://:m%2Fpw@s1:1/3;sentinel://s2:2;sentinel://s3:3"
    assert config["broker_url"] == config["result_backend"] == url
    for options in (config["broker_transport_options"],
                    config["result_backend_transport_options"]):
        assert options["master_name"] == MASTER
        assert options["sentinel_kwargs"]["password"] == "s-pw"
        assert options["visibility_timeout"] == settings.visibility_timeout
    assert config["broker_transport_options"]["global_keyprefix"] == "p:"
    # One server: the URL as given, no Sentinel option.
    plain = celery_config(load_settings({"REDIS_URL": "redis://:pw@h:1/2"}))
    assert plain["broker_url"] == plain["result_backend"] == "redis://:pw@h:1/2"
    assert "master_name" not in plain["broker_transport_options"]
    assert "master_name" not in plain["result_backend_transport_options"]


def test_kombu_and_celerys_sentinel_backend_read_what_we_give_them() -> None:
    """The URL form is the one kombu's and Celery's own parsers take apart: every Sentinel,
    and the master's password and database from the first (no connection is made)."""
    from celery import Celery
    from kombu import Connection

    settings = load_settings({
        "REDIS_URL": "sentinel://:m-pw@s1:1/3;sentinel://s2:2",
        "REDIS_SENTINEL_MASTER": MASTER})
    config = celery_config(settings)
    connection = Connection(config["broker_url"],
                            transport_options=config["broker_transport_options"])
    assert connection.transport_cls == "sentinel" and len(connection.alt) == 2
    assert (connection.hostname, connection.port, connection.virtual_host,
            connection.password) == ("s1", 1, "3", "m-pw")
    app = Celery("probe", set_as_current=False)
    app.conf.update(config)
    backend = app.backend
    assert type(backend).__name__ == "SentinelBackend"
    params = backend.connparams
    assert [(h["host"], h["port"]) for h in params["hosts"]] == [("s1", 1), ("s2", 2)]
    assert (params["db"], params["password"]) == (3, "m-pw")
    # A client of the broker an app's configuration names (the notification probe's).
    probe = redis_client.from_celery_conf(app.conf, socket_timeout=0.5).connection_pool
    assert isinstance(probe, SentinelConnectionPool) and probe.service_name == MASTER
    assert (probe.connection_kwargs["db"], probe.connection_kwargs["password"]) == (3, "m-pw")


def test_kombus_redis_schemes_get_the_guarded_channel() -> None:
    """Every scheme a broker URL may have resolves to shared.redis_client's transports (also
    after kombu switches to the next Sentinel URL, which re-reads the scheme), and a channel
    whose connection kombu already dropped raises a connection error, which kombu's and
    Celery's clean-up pass over, instead of an AttributeError that stopped the worker."""
    from types import SimpleNamespace

    from kombu import Connection

    celery_config(load_settings({}))  # installs them
    for url, transport in (("redis://127.0.0.1:1/0", redis_client.Transport),
                           ("rediss://127.0.0.1:1/0", redis_client.Transport),
                           ("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2",
                            redis_client.SentinelTransport)):
        connection = Connection(url)
        assert connection.get_transport_cls() is transport
        connection.switch(url.split(";")[-1])
        assert connection.get_transport_cls() is transport
    assert redis_client.Transport.Channel is redis_client.GuardedChannel
    assert redis_client.SentinelTransport.Channel is redis_client.GuardedSentinelChannel
    closed = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(redis.ConnectionError):
        redis_client.GuardedSentinelChannel._connparams(closed)
    assert redis.ConnectionError in Connection("redis://127.0.0.1:1/0").connection_errors


def test_the_limits_storage_uri() -> None:
    found = parse_target("sentinel://:pw@s1:1/2;sentinel://s2:2", MASTER)
    assert redis_client.limits_storage_uri(found) == f"redis+sentinel://s1:1,s2:2/{MASTER}"
    assert redis_client.limits_storage_uri("redis://h:1/0") == "redis://h:1/0"
    storage = redis_client.limits_storage(found, "ratelimit")
    assert storage.service_name == MASTER and storage.use_replicas is False
    master = storage.storage.connection_pool.connection_kwargs
    assert (master["db"], master["password"]) == (2, "pw")
    # The Sentinels get no password of the master's (they have their own, or none).
    assert all(s.connection_pool.connection_kwargs.get("password") is None
               for s in storage.sentinel.sentinels)


def test_a_sentinel_client_follows_the_master_and_retries_a_broken_connection() -> None:
    found = parse_target("sentinel://:pw@s1:1/2;sentinel://s2:2", MASTER, "s-pw")
    client = redis_client.client(found, socket_timeout=0.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == MASTER
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 0.5)
    assert kwargs["retry"].get_retries() == redis_client.FAILOVER_RETRIES
    assert redis.ConnectionError in kwargs["retry_on_error"]
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["password"] for s in sentinels] == ["s-pw"] * 2
    assert isinstance(redis_client.client("redis://h:1/0").connection_pool,
                      redis.ConnectionPool)


# Calls that open a Redis connection (or a limits storage on one) without asking
# shared.redis_client; imports of redis' Sentinel module likewise.
_OWN_CONNECTION = frozenset({"Redis", "StrictRedis", "ConnectionPool", "Sentinel", "from_url",
                             "from_pool", "storage_from_string", "RedisStorage",
                             "RedisSentinelStorage"})


def _own_connections(path: Path) -> list[str]:
    """`file:line name` for each call or import of _OWN_CONNECTION's kind in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        name = None
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("redis.sentinel", "limits.storage")):
            name = node.module
        elif isinstance(node, ast.Import):
            name = next((a.name for a in node.names if a.name.startswith("redis.sentinel")),
                        None)
        prefixes = ("redis.sentinel", "limits.storage")
        if name in _OWN_CONNECTION or (name or "").startswith(prefixes):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_every_redis_user_goes_through_the_one_owner() -> None:
    """No module of api/, shared/, worker/ or scripts/ but shared/redis_client.py builds a
    Redis client, pool, Sentinel or limits storage of its own."""
    files = [p for top in ("api", "shared", "worker", "scripts")
             for p in sorted((ROOT / top).rglob("*.py")) if p != OWNER]
    assert len(files) > 100
    assert [hit for path in files for hit in _own_connections(path)] == []
    # The guard is not vacuous: it finds the owner's own calls.
    assert {hit.rsplit(" ", 1)[1] for hit in _own_connections(OWNER)} >= {
        "from_url", "Sentinel", "storage_from_string", "limits.storage"}


def test_the_redis_users_import_the_owner() -> None:
    """Each module that talks to Redis names shared.redis_client (the guard above sees no
    other way in)."""
    users = ("api/broker.py", "api/http/limits.py", "api/http/read_timeout.py",
             "api/resources/health.py", "shared/celery_config.py", "shared/notify/enqueue.py",
             "shared/notify/slot.py", "shared/sources/rate_limit.py")
    for name in users:
        tree = ast.parse((ROOT / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "shared" for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert "redis_client" in imported or "shared.redis_client" in imported, name
