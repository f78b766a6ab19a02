"""Opening the Redis connection: a single server or a Redis Cluster, from one URL."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    return url.startswith(_CLUSTER_SCHEMES)


def cluster_nodes(url: str) -> list[ClusterNode]:
    """``redis+cluster://h1:p1,h2:p2`` -> startup nodes."""
    rest = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    hosts = rest.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return nodes


def open_redis(url: str, *, socket_timeout: float = 2.0, connect_timeout: float = 1.0) -> Any:
    """A redis.asyncio client (bytes in, bytes out) for ``url``."""
    if is_cluster_url(url):
        rest = url.split("://", 1)[1].split("/", 1)[0]
        credentials = rest.rpartition("@")[0]
        username, _, password = credentials.partition(":")
        return RedisCluster(
            startup_nodes=cluster_nodes(url),
            ssl=url.startswith("rediss"),
            username=username or None,
            password=password or None,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        max_connections=256,
    )
