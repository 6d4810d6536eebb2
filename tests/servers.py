"""The test suite's servers: see :mod:`hotlimit._servers`."""

from hotlimit._servers import (
    Cluster,
    Sentinels,
    Server,
    any_binary,
    cluster,
    free_cluster_port,
    free_port,
    redis_binary,
    sentinels,
    server,
    valkey_binary,
)

__all__ = [
    "Cluster",
    "Sentinels",
    "Server",
    "any_binary",
    "cluster",
    "free_cluster_port",
    "free_port",
    "redis_binary",
    "sentinels",
    "server",
    "valkey_binary",
]
