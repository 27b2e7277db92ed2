"""The one owner of Redis connections: REDIS_URL, plain or Sentinel, to clients, Celery and limits.

`REDIS_URL` is either one server (`redis://`, `rediss://`, `unix://`) or a list of Sentinels,
`sentinel://[:password@]host:port[/db];sentinel://host:port;...`, with the name of the master
they watch in `REDIS_SENTINEL_MASTER` (and their own password, if they have one, in
`REDIS_SENTINEL_PASSWORD`; the password in the URL is the master's). Every Redis user gets its
connection from here (tests/shared/test_redis_client.py guards it), so that each one follows the
master through a failover:

- `client()`: a redis-py client; for Sentinel `Sentinel(...).master_for(master)`, whose pool
  asks the Sentinels for the master on each new connection, and whose connections turn a
  demoted master's READONLY answer into a ConnectionError (redis-py's fix of redis-py#460):
  the client retries a few times, so a switch-over costs a command a reconnect, not an error.
- `celery_options()`: the broker and result backend URLs and their transport options
  (`master_name`, the Sentinels' own connection settings), and kombu's Redis transports with a
  fix for a worker crash on a lost broker connection (see `_ClosedChannelGuard`).
- `limits_storage()`: the `limits` storage of the upstream quotas
  (`redis+sentinel://host:port,host:port/<master>` for Sentinel, replicas never read).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlsplit

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.config import ConfigError, Settings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
# Redis's own schemes (redis-py's from_url); anything else in REDIS_URL is refused at start.
PLAIN_SCHEMES = ("redis", "rediss", "unix")
# Each Sentinel query waits this long at most: a Sentinel that is down or frozen is skipped
# for the next one.
SENTINEL_TIMEOUT_SECONDS = 1.0
# A command that meets a broken connection (the master killed, or demoted and answering
# READONLY) is retried this often, each time on a new connection to the master the Sentinels
# name then: 0.1 + 0.2 + 0.4 + 0.5 s of backoff. A killed master is only replaced after the
# Sentinels' down-after-milliseconds plus the election; until then callers see the error
# (docs/scaling.md).
FAILOVER_RETRIES = 4
FAILOVER_BACKOFF = (0.5, 0.05)  # (cap, base) seconds


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one server's URL, or the Sentinels and the name of their master."""

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        """Whether the master is found through Sentinels."""
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where it points, without any password (for logs and errors)."""
        if self.is_sentinel:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel://{hosts} master {self.master} db {self.db}"
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        netloc += f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{netloc}{parts.path}"


def parse_target(url: str, master: str | None = None,
                 sentinel_password: str | None = None) -> RedisTarget:
    """REDIS_URL (and REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD) as a RedisTarget.

    Raises ConfigError naming the setting; no error message repeats a password.
    """
    text = (url or "").strip()
    scheme = text.partition("://")[0].lower()
    if scheme != SENTINEL_SCHEME:
        if scheme not in PLAIN_SCHEMES or "://" not in text:
            got = f"scheme {scheme!r}" if "://" in text else "no scheme://"
            raise ConfigError("REDIS_URL must be redis://, rediss://, unix:// or a list of "
                              f"sentinel://host:port separated by ';', got {got}")
        if master:
            raise ConfigError("REDIS_SENTINEL_MASTER is set but REDIS_URL names no Sentinel "
                              "(sentinel://host:port;sentinel://host:port)")
        return RedisTarget(url=text)
    if not master:
        raise ConfigError("REDIS_URL names Sentinels (sentinel://): set REDIS_SENTINEL_MASTER "
                          "to the name of the master they watch")
    sentinels: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for index, chunk in enumerate(part.strip() for part in text.split(";")):
        if not chunk:
            continue
        try:
            parts = urlsplit(chunk)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ConfigError(f"REDIS_URL: Sentinel {index + 1} has no valid port") from None
        if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname:
            raise ConfigError(f"REDIS_URL: Sentinel {index + 1} is not sentinel://host:port")
        path = parts.path.strip("/")
        if path and (index or not path.isdigit()):
            raise ConfigError("REDIS_URL: only the first Sentinel may carry a /db index "
                              "(a number)")
        if parts.query or parts.fragment:
            raise ConfigError(f"REDIS_URL: Sentinel {index + 1} has a query; options are set "
                              "by the project, not in the URL")
        if index == 0:
            db = int(path or 0)
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password is not None else None
        elif parts.username or parts.password:
            raise ConfigError("REDIS_URL: only the first Sentinel may carry the master's "
                              "password")
        sentinels.append((parts.hostname, port))
    if not sentinels:
        raise ConfigError("REDIS_URL names no Sentinel host")
    return RedisTarget(url=text, sentinels=tuple(sentinels), master=master, db=db,
                       username=username, password=password,
                       sentinel_password=sentinel_password or None)


def target(settings: Settings) -> RedisTarget:
    """The settings' Redis (REDIS_URL, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD)."""
    return parse_target(settings.redis_url, settings.redis_sentinel_master,
                        settings.redis_sentinel_password)


def as_target(where: RedisTarget | Settings | str) -> RedisTarget:
    """A RedisTarget from a target, Settings, or one plain URL."""
    if isinstance(where, RedisTarget):
        return where
    if isinstance(where, Settings):
        return target(where)
    return parse_target(where)


def _failover_retry() -> Retry:
    cap, base = FAILOVER_BACKOFF
    return Retry(ExponentialBackoff(cap=cap, base=base), FAILOVER_RETRIES)


def _sentinel_kwargs(where: RedisTarget) -> dict[str, Any]:
    """Connection settings of the Sentinels themselves (never the master's password)."""
    kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                              "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS}
    if where.sentinel_password:
        kwargs["password"] = where.sentinel_password
    return kwargs


def _master_kwargs(where: RedisTarget) -> dict[str, Any]:
    """The master's database, credentials and failover retry."""
    kwargs: dict[str, Any] = {"db": where.db, "retry": _failover_retry(),
                              "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
    if where.username:
        kwargs["username"] = where.username
    if where.password is not None:
        kwargs["password"] = where.password
    return kwargs


def _sentinel(where: RedisTarget) -> Sentinel:
    # redis.sentinel is untyped (no annotations on Sentinel and master_for).
    return Sentinel(list(where.sentinels),  # type: ignore[no-untyped-call]
                    sentinel_kwargs=_sentinel_kwargs(where))


def client(where: RedisTarget | Settings | str, **options: Any) -> redis.Redis:
    """A redis-py client of the master (`options`: socket_timeout, decode_responses, ...)."""
    found = as_target(where)
    if not found.is_sentinel:
        return redis.Redis.from_url(found.url, **options)
    assert found.master is not None
    master: redis.Redis = _sentinel(found).master_for(  # type: ignore[no-untyped-call]
        found.master, **{**_master_kwargs(found), **options})
    return master


def connection_pool(where: RedisTarget | Settings | str,
                    **options: Any) -> redis.ConnectionPool:
    """A connection pool of the master, for callers that drive connections themselves."""
    found = as_target(where)
    if not found.is_sentinel:
        return redis.ConnectionPool.from_url(found.url, **options)
    return client(found, **options).connection_pool


def _celery_url(where: RedisTarget) -> str:
    """The URL form kombu and Celery's Sentinel backend read: the master's credentials and
    database on the first Sentinel."""
    if not where.is_sentinel:
        return where.url
    auth = ""
    if where.password is not None or where.username:
        auth = f"{quote(where.username or '', safe='')}:{quote(where.password or '', safe='')}@"
    urls = [f"{SENTINEL_SCHEME}://{auth if i == 0 else ''}{host}:{port}"
            + (f"/{where.db}" if i == 0 else "")
            for i, (host, port) in enumerate(where.sentinels)]
    return ";".join(urls)


class _ClosedChannelGuard:
    """A kombu Redis channel whose connection is gone raises a ConnectionError, not an
    AttributeError.

    kombu 5.7 with Celery 5.7: when the broker connection breaks while a task is unacknowledged
    (acks_late), the consumer's clean-up drops the transport's connection info before the
    channel's close restores that message, and the later ack of the task meets the same
    missing info. The AttributeError this raised is no connection error, so the worker
    process stopped ("Unrecoverable error"), with one server (a Redis restart) as with
    Sentinels (a failover): tests/faults/test_sentinel_failover.py. As a connection error it is
    logged and passed over; the message stays in Redis's unacked set, where the visibility
    timeout hands it back (its run is then terminal: a no-op).
    """

    connection: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous)  # type: ignore[misc]


class GuardedChannel(_ClosedChannelGuard, kombu_redis.Channel):
    """kombu's Redis channel, guarded (_ClosedChannelGuard)."""


class GuardedSentinelChannel(_ClosedChannelGuard, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, guarded (_ClosedChannelGuard)."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the guarded channel (`redis://`, `rediss://`)."""

    Channel = GuardedChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with the guarded channel (`sentinel://`)."""

    Channel = GuardedSentinelChannel


def install_transports() -> None:
    """Make kombu's `redis`, `rediss` and `sentinel` schemes use the guarded transports.

    By scheme, not by Celery's broker_transport: kombu re-reads the transport from the URL's
    scheme whenever it switches to the next of several broker URLs (the other Sentinels).
    Call before any Celery app connects (celery_options does).
    """
    TRANSPORT_ALIASES.update(redis=f"{__name__}:Transport", rediss=f"{__name__}:Transport",
                             sentinel=f"{__name__}:SentinelTransport")


def celery_options(where: RedisTarget | Settings) -> dict[str, Any]:
    """broker_url, result_backend and the Sentinel part of both transport options.

    For Sentinel, kombu's `sentinel://` transport and Celery's `sentinel://` result backend
    each take `master_name` and `sentinel_kwargs` from their transport options; for one server
    the options are empty. kombu's transports are the guarded ones (install_transports).
    """
    install_transports()
    found = as_target(where)
    url = _celery_url(found)
    extra: dict[str, Any] = {}
    if found.is_sentinel:
        extra = {"master_name": found.master, "sentinel_kwargs": _sentinel_kwargs(found)}
    return {"broker_url": url, "result_backend": url, "transport_options": extra}


def from_celery_conf(conf: Any, **options: Any) -> redis.Redis:
    """A client of the broker a Celery app's configuration names (its URL and options)."""
    transport: Mapping[str, Any] = conf.broker_transport_options or {}
    sentinel_kwargs = transport.get("sentinel_kwargs") or {}
    return client(parse_target(conf.broker_url, transport.get("master_name"),
                               sentinel_kwargs.get("password")), **options)


def limits_storage_uri(where: RedisTarget | Settings | str) -> str:
    """The `limits` storage URI: the plain URL, or `redis+sentinel://h:p,h:p/<master>`
    (the master's credentials and database go in as options: limits_storage)."""
    found = as_target(where)
    if not found.is_sentinel:
        return found.url
    hosts = ",".join(f"{host}:{port}" for host, port in found.sentinels)
    return f"redis+sentinel://{hosts}/{found.master}"


def limits_storage(where: RedisTarget | Settings | str, key_prefix: str) -> Any:
    """The `limits` storage on this Redis; for Sentinel, every read goes to the master (a
    replica's window may lag behind the hits just counted)."""
    from limits.storage import storage_from_string

    found = as_target(where)
    uri = limits_storage_uri(found)
    if not found.is_sentinel:
        return storage_from_string(uri, key_prefix=key_prefix)
    # limits hands the master's password to the Sentinels too unless sentinel_kwargs says
    # otherwise: it always carries theirs (None when they have none).
    options: dict[str, Any] = {
        "use_replicas": False, **_master_kwargs(found),
        "sentinel_kwargs": {"username": None, "password": None, **_sentinel_kwargs(found)}}
    return storage_from_string(uri, key_prefix=key_prefix, **options)
