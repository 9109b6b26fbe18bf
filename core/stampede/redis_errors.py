"""What "Redis cannot answer right now" means, for every adapter over the stock engine's client.

A lost connection or a timeout, and on a cluster a failover in progress (a slot without a master,
CLUSTERDOWN, TRYAGAIN, a write reaching a node that became a replica, redirects beyond the client's
retries). Callers answer these with 503 and Retry-After, giving stock back where they can.
"""

from __future__ import annotations

from redis.exceptions import (
    ClusterError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    RedisClusterException,
    TryAgainError,
    ReadOnlyError,
    MovedError,
)
