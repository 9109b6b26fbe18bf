"""Which Redis a ``STAMPEDE_REDIS_URL`` names: one server (``redis://``, ``rediss://``, ``unix://``) or a Redis
Cluster (``redis+cluster://host:port``, ``rediss+cluster://`` with TLS), reached through redis-py's cluster
client. One setting decides it, so the API, the worker, the operator, the command line and the chart's Secret
all follow the same address. A cluster URL names any one node (the client discovers the others) and has no
database number but 0: Redis Cluster has only database 0."""

from __future__ import annotations

from urllib.parse import urlsplit

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.startswith(CLUSTER_SCHEMES)


def client_url(url: str) -> str:
    """The URL redis-py's client reads: a cluster URL without its ``+cluster`` mark."""
    return url.replace("+cluster://", "://", 1) if is_cluster(url) else url


def cluster_problem(url: str) -> str | None:
    """What is wrong with a cluster URL (no host, a database other than 0), or None."""
    parts = urlsplit(client_url(url))
    if not parts.hostname:
        return "a Redis Cluster URL needs a host (any node of the cluster)"
    db = parts.path.strip("/")
    if db not in ("", "0"):
        return f"Redis Cluster has only database 0, not {db!r}"
    return None


__all__ = ["CLUSTER_SCHEMES", "SCHEMES", "client_url", "cluster_problem", "is_cluster"]
