"""The live workers, in Redis: each worker renews its entry; one that stops renewing drops out.

`cs:workers` is a sorted set of worker id -> expiry (ms). One script renews this worker's entry,
drops lapsed ones and answers the live list, so a heartbeat is one round trip.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from comfy_service import constants as c

_BEAT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class Membership:
    def __init__(self, redis: aioredis.Redis, worker_id: str, ttl_s: float) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._beat = redis.register_script(_BEAT)

    async def beat(self) -> tuple[str, ...]:
        """Renew this worker's entry; the live workers, this one included, sorted."""
        now_ms = int(time.time() * 1000)
        members = await self._beat(keys=[c.WORKERS_KEY], args=[
            self.worker_id, now_ms + int(self.ttl_s * 1000), now_ms])
        return tuple(sorted(m.decode() if isinstance(m, bytes) else m for m in members))

    async def leave(self) -> None:
        """Stopping: the others take this worker's nodes at their next beat."""
        await self.redis.zrem(c.WORKERS_KEY, self.worker_id)
