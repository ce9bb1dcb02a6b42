"""The one way the gateway and the workers connect to Redis.

redis-py's asyncio pool allows 100 connections and then raises MaxConnectionsError instead of
waiting: a worker with a few hundred tasks in flight hit it (tasks saw "Too many connections"
and failed over). A blocking pool waits up to `wait_s` for a free connection instead, so a
burst queues for a moment rather than failing, and the connection count stays bounded.
"""

from __future__ import annotations

import redis.asyncio as aioredis

MAX_CONNECTIONS = 256
WAIT_S = 10.0


def connect(url: str, socket_timeout: float, max_connections: int = MAX_CONNECTIONS,
            wait_s: float = WAIT_S) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_s, socket_timeout=socket_timeout,
        socket_connect_timeout=5, health_check_interval=10)
    return aioredis.Redis(connection_pool=pool)
