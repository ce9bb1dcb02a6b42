"""Retention: the objects of expired tasks and uploads are deleted from the store.

Records expire in Redis (a task TASK_TTL after it ended, an upload UPLOAD_TTL after its last
use); their objects have no expiry of their own. Each owner of objects is noted in one sorted
set with the time to look at it again. A sweep claims due entries in one atomic step (pushing
their time back by CLAIM_S, so several workers never take the same entry, and an entry whose
sweeper died is taken again later), then for each: the record is gone -> delete its objects
and the entry; it still expires -> look again when it will have; it has no expiry yet (a task
not ended) -> look again after a TTL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from actors.uploads import input_prefix
from comfy_service import constants as c
from comfy_service.logs import event
from comfy_service.outputs import task_prefix
from comfy_service.storage import BlobStore

log = logging.getLogger("actors.retention")

CLAIM_S = 300.0
BATCH = 100
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], member) end
return due
"""
_OWNERS = {"task": (c.TASK_KEY, "task_id", task_prefix),
           "upload": (c.UPLOAD_KEY, "upload_id", input_prefix)}


def now_ms() -> int:
    return int(time.time() * 1000)


def next_check_ms(now: int, pttl_ms: int, ttl_s: int) -> int | None:
    """When to look at an owner again, from its record's PTTL; None: it is gone, delete."""
    if pttl_ms == -2:
        return None
    if pttl_ms == -1:  # no expiry yet (a task that has not ended)
        return now + ttl_s * 1000
    return now + pttl_ms + 1000


@dataclass(frozen=True)
class SweepResult:
    claimed: int
    owners_deleted: int
    objects_deleted: int


class Retention:
    def __init__(self, redis: aioredis.Redis, store: BlobStore, ttl_s: int) -> None:
        self.redis = redis
        self.store = store
        self.ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)

    async def note(self, kind: str, owner_id: str, ttl_s: int) -> None:
        """`owner_id` has objects in the store; its record lives at least `ttl_s` more."""
        await self.redis.zadd(c.RETENTION_KEY, {f"{kind}:{owner_id}": now_ms() + ttl_s * 1000},
                              nx=True)

    async def sweep(self, batch: int = BATCH) -> SweepResult:
        now = now_ms()
        claimed = await self._claim(keys=[c.RETENTION_KEY],
                                    args=[now, batch, now + int(CLAIM_S * 1000)])
        owners = objects = 0
        for raw in claimed:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            kind, _, owner_id = member.partition(":")
            if kind not in _OWNERS:
                await self.redis.zrem(c.RETENTION_KEY, member)
                continue
            key_format, field, prefix = _OWNERS[kind]
            pttl = await self.redis.pttl(key_format.format(**{field: owner_id}))
            when = next_check_ms(now_ms(), pttl, self.ttl_s)
            if when is not None:
                await self.redis.zadd(c.RETENTION_KEY, {member: when}, xx=True)
                continue
            objects += await self.store.delete_prefix(prefix(owner_id))
            await self.redis.zrem(c.RETENTION_KEY, member)
            owners += 1
        if owners:
            event(log, "retention.swept", owners=owners, objects=objects)
        return SweepResult(len(claimed), owners, objects)
