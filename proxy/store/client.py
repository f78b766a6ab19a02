"""Opening the Redis connection: a single server or a Redis Cluster, from one URL.

A cluster URL lists one or more startup nodes; the client discovers the rest::

    redis+cluster://[user:password@]host1:port1,host2:port2[/0]
    rediss+cluster://...                      (TLS)

Every key of one cache shard carries the same hash tag, so each shard's atomic scripts run
on one master; nothing else about the store changes on a cluster.

A Sentinel URL lists the sentinels and names the monitored master; the client asks them
where the master is, and asks again after a failover::

    redis+sentinel://[user:password@]host1:port1,host2:port2/service_name[/db]
    rediss+sentinel://...                     (TLS to the master)

The credentials are the master's; the sentinels are asked without them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_PORT = 6379


class RedisUrlError(ValueError):
    """A ``redis_url`` that cannot be used; the message says what is wrong."""


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.startswith(_CLUSTER_SCHEMES)


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://`` URLs."""
    return url.startswith(_SENTINEL_SCHEMES)


def sentinel_target(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """``redis+sentinel://h1:p1,h2:p2/name/db`` -> (sentinels, service name, db)."""
    rest = url.split("://", 1)[1].partition("?")[0]
    authority, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise RedisUrlError(
            "redis_url: a sentinel URL is redis+sentinel://host:port[,host:port]/service_name"
            f"[/db], got path /{path}"
        )
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise RedisUrlError(f"redis_url: invalid database {parts[1]!r}") from None
    hosts = authority.rpartition("@")[2]
    nodes = cluster_nodes("redis+cluster://" + hosts)
    return [(n.host, int(n.port)) for n in nodes], unquote(parts[0]), db


def _credentials(url: str) -> tuple[str | None, str | None]:
    authority = url.split("://", 1)[1].partition("/")[0]
    credentials = authority.rpartition("@")[0]
    username, _, password = credentials.partition(":")
    return unquote(username) or None, unquote(password) or None


def _sentinel_master(url: str, **options: Any) -> Any:
    sentinels, service, db = sentinel_target(url)
    username, password = _credentials(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        socket_timeout=options.get("socket_timeout", 2.0),
        socket_connect_timeout=options.get("socket_connect_timeout", 1.0),
    )
    return sentinel.master_for(
        service,
        db=db,
        username=username,
        password=password,
        ssl=url.startswith("rediss"),
        **options,
    )


def _authority(url: str) -> tuple[str, str]:
    """(credentials, host list) of a cluster URL; checks the database is 0."""
    rest = url.split("://", 1)[1]
    rest, _, _query = rest.partition("?")
    authority, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise RedisUrlError(f"redis_url: a Redis Cluster has only database 0, got /{path}")
    credentials, _, hosts = authority.rpartition("@")
    return credentials, hosts


def cluster_nodes(url: str) -> list[ClusterNode]:
    """``redis+cluster://h1:p1,h2:p2`` -> startup nodes (IPv6 as ``[::1]:7000``)."""
    _, hosts = _authority(url)
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, tail = item[1:].partition("]")
            port_text = tail.removeprefix(":")
        else:
            host, sep, port_text = item.rpartition(":")
            if not sep:
                host, port_text = item, ""
        if not host:
            raise RedisUrlError(f"redis_url: node {item!r} has no host")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise RedisUrlError(f"redis_url: node {item!r} has an invalid port") from None
        if not 0 < port < 65536:
            raise RedisUrlError(f"redis_url: node {item!r} has an invalid port")
        nodes.append(ClusterNode(host, port))
    if not nodes:
        raise RedisUrlError("redis_url: a cluster URL needs at least one host:port")
    return nodes


def check_url(url: str) -> None:
    """Raise :class:`RedisUrlError` if ``url`` cannot be opened (cluster URLs in depth)."""
    if is_cluster_url(url):
        cluster_nodes(url)
    elif is_sentinel_url(url):
        sentinel_target(url)


def _closed_under(exc: AttributeError) -> RedisConnectionError:
    return RedisConnectionError(f"a cluster connection was closed under the command ({exc})")


class FailoverSafeCluster(RedisCluster):
    """A RedisCluster whose commands fail as store errors, never ``AttributeError``, when
    their connection is closed under them.

    On CLUSTERDOWN (a master just died, its replica not yet promoted) redis-py closes
    every connection of the client, also those other tasks are writing to at that moment;
    such a write raised ``AttributeError`` ('NoneType' object has no attribute
    'writelines'), which no fail-open path expects: 2 to 7 of ~4,000 requests failed with
    a 500 or 502 in ``bench.failover --mode cluster`` when it happened. As a
    ``ConnectionError`` it counts against the circuit breaker and the request goes on to
    the upstream. Not retried here: a reply lost that way may be of a command that ran."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise _closed_under(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _FailoverSafePipeline(self, transaction)  # type: ignore[abstract]


class _FailoverSafePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except AttributeError as exc:
            raise _closed_under(exc) from exc


def open_redis(url: str, *, socket_timeout: float = 2.0, connect_timeout: float = 1.0) -> Any:
    """A redis.asyncio client (bytes in, bytes out) for ``url``: plain, cluster or the
    master a set of sentinels names."""
    if is_sentinel_url(url):
        # After a failover the old master's connections fail (or it answers READONLY);
        # each retry asks the sentinels again, so commands move to the new master.
        return _sentinel_master(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=256,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=3),
        )
    if is_cluster_url(url):
        credentials, _ = _authority(url)
        username, _, password = credentials.partition(":")  # as redis-py reads redis://
        return FailoverSafeCluster(
            startup_nodes=cluster_nodes(url),
            ssl=url.startswith("rediss"),
            username=unquote(username) or None,
            password=unquote(password) or None,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # Per node; the hit path is one HMGET, so this bounds concurrency per master.
            max_connections=256,
            # A failover moves slots; retry MOVED/ASK and connection errors a few times
            # only, so a dead cluster still fails open quickly.
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=3),
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        max_connections=256,
        # from_url builds its pool without redis-py's default Retry, so a pooled
        # connection left over from before a Redis restart failed its next command.
        # One immediate retry on a fresh connection heals that; timeouts are not retried,
        # so a hung store costs one socket timeout, not two.
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )


def open_subscriber(url: str, attempt: int = 0, *, connect_timeout: float = 1.0) -> Any:
    """A plain client for pub/sub at ``url``. On a cluster, one node is enough (PUBLISH
    reaches every node): startup node number ``attempt`` modulo their count, so each
    reconnection tries the next one. With sentinels, the current master."""
    if is_sentinel_url(url):
        return _sentinel_master(url, socket_connect_timeout=connect_timeout)
    if is_cluster_url(url):
        credentials, _ = _authority(url)
        username, _, password = credentials.partition(":")
        nodes = cluster_nodes(url)
        node = nodes[attempt % len(nodes)]
        return aioredis.Redis(
            host=node.host,
            port=int(node.port),
            ssl=url.startswith("rediss"),
            username=unquote(username) or None,
            password=unquote(password) or None,
            socket_connect_timeout=connect_timeout,
        )
    return aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout)
