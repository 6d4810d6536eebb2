"""The test suite's servers: see :mod:`hotlimit._servers`."""

from hotlimit._servers import (
    Cluster,
    Sentinels,
    Server,
    Tls,
    any_binary,
    cluster,
    free_cluster_port,
    free_port,
    make_tls,
    redis_binary,
    sentinels,
    server,
    valkey_binary,
)

__all__ = [
    "Cluster",
    "Sentinels",
    "Server",
    "Tls",
    "any_binary",
    "cluster",
    "free_cluster_port",
    "free_port",
    "make_tls",
    "redis_binary",
    "sentinels",
    "server",
    "valkey_binary",
]
