"""Task records, the ready queue, node slots and leases, all in Redis.

Slot accounting is atomic (Lua): a task is bound to a node only when the node has a free slot,
and every bound task carries a lease its worker renews; a lease that lapses means its worker
died, and another worker adopts the task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from actors.task_events import events_between
from actors.task_metrics import observe_transition
from actors.tasks import TaskRecord
from comfy_service import constants as c

PRIORITY_LIMIT = 1000  # priorities are clamped to +-this so scores stay exact in a double
# Scores are -priority * 2**42 + acceptance time in ms since 2025: priorities never mix, and
# 2**42 ms is 139 years; |score| stays below 2**53, so doubles hold it exactly.
_SEQ_SPAN = 2 ** 42
_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z

# Move a ready task onto a node if it is still waiting and the node has a free slot; lease it
# to the worker and remember which node holds it (so a slot never leaks, even if the worker
# dies right after).
_BIND = """
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[5]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[4])
return 1
"""

# Take over a lapsed lease (its worker died): only one adopter wins. Answers the node.
_ADOPT = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local node = redis.call('HGET', KEYS[2], ARGV[1])
if node then redis.call('HSET', ARGV[5] .. node, ARGV[1], ARGV[4]) end
return node or ''
"""

# Slots used on each node (KEYS: their slot hashes), in one call: a pipeline of one HLEN per
# node cost the worker redis-py's packing and parsing of N commands on every bind pass.
_SLOTS_USED = """
local used = {}
for i, key in ipairs(KEYS) do used[i] = redis.call('HLEN', key) end
return used
"""

# Admission: into the ready queue unless it is there already or holds a slot (a redelivered
# message, or the sweeper re-sending one, must never queue a task twice).
ADMIT_LUA = """
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1])
   or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


# KEYS task record, accepted set, owner's in-flight set ("" without an owner), idempotency key
# ("" without one); ARGV record JSON, task id, now (ms), cap (0: none), idempotency answer, its
# TTL (s). {1, ''} stored; {0, ''} refused by the cap; {0, answer} the key's earlier answer.
_CREATE = """
if KEYS[4] ~= '' then
  local earlier = redis.call('GET', KEYS[4])
  if earlier then return {0, earlier} end
end
if KEYS[3] ~= '' then
  local cap = tonumber(ARGV[4])
  if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return {0, ''} end
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {1, ''}
"""


# A batch, stored and admitted in one call: every record, its place among the owner's tasks in
# flight (all refused when the batch would take the owner past its cap), admission (ADMIT_LUA,
# so no message per task; nothing waits in the accepted set), the batch record, one wake-up.
# KEYS admit_keys(), owner's in-flight set ("" without an owner), batch key, each task's key;
# ARGV cap (0: none), now (ms), batch JSON, its TTL (s), wake channel, then per task: id,
# record JSON, ready score. 1 stored; 0 refused by the cap.
_CREATE_BATCH = "local function admit(ARGV)\n" + ADMIT_LUA + """end
local n = #KEYS - 6
if KEYS[5] ~= '' then
  local cap = tonumber(ARGV[1])
  if cap > 0 and redis.call('ZCARD', KEYS[5]) + n > cap then return 0 end
end
for i = 1, n do
  local at = 6 + 3 * (i - 1)
  redis.call('SET', KEYS[6 + i], ARGV[at + 1])
  if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[2], ARGV[at]) end
  admit({ARGV[at], ARGV[at + 2]})
end
redis.call('SET', KEYS[6], ARGV[3], 'EX', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'batch')
return 1
"""


def acceptance_sequence() -> int:
    """First come, first served within a priority, by acceptance time (no Redis round trip;
    gateways on several hosts agree to within their clock skew)."""
    return now_ms() - _EPOCH_MS


def admit_keys() -> list[str]:
    return [c.READY_KEY, c.LEASES_KEY, c.BOUND_KEY, c.ACCEPTED_KEY]


def now_ms() -> int:
    return int(time.time() * 1000)


def ready_score(priority: int, sequence: int) -> float:
    """Higher priority first, then first come first served."""
    clamped = max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority))
    return float(-clamped * _SEQ_SPAN + sequence)


EVENTS_MAX = 2000    # events kept per task (progress is written at most 5 times a second)
EVENTS_READ = 100    # events read at once by a stream


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TaskStore:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._bind = redis.register_script(_BIND)
        self._slots_used = redis.register_script(_SLOTS_USED)
        self._adopt = redis.register_script(_ADOPT)
        self._admit = redis.register_script(ADMIT_LUA)
        self._create = redis.register_script(_CREATE)
        self._create_batch = redis.register_script(_CREATE_BATCH)

    @staticmethod
    def key(task_id: str) -> str:
        return c.TASK_KEY.format(task_id=task_id)

    async def create(self, record: TaskRecord, max_active: int = 0,
                     idempotency: tuple[str, str] | None = None) -> tuple[bool, str | None]:
        """Store a new task, atomically: note it as accepted until admission takes it (see
        sweep); with an owner, among its tasks in flight, refused (False) when the owner
        already has `max_active` (> 0) of them; with `idempotency` (Redis key, answer to
        replay), that answer too, unless the key holds one already: then nothing is stored and
        that earlier answer comes back instead."""
        active = c.ACTIVE_KEY.format(tenant=record.owner) if record.owner else ""
        idem_key, answer = idempotency or ("", "")
        created, earlier = await self._create(
            keys=[self.key(record.task_id), c.ACCEPTED_KEY, active, idem_key],
            args=[json.dumps(record.to_dict()), record.task_id, now_ms(), max_active, answer,
                  self.ttl_s])
        if earlier:
            return False, earlier.decode() if isinstance(earlier, bytes) else str(earlier)
        return bool(int(created)), None

    async def create_batch(self, batch_id: str, batch_json: str, records: list[TaskRecord],
                           owner: str | None, max_active: int = 0) -> bool:
        """Store and admit a batch's tasks and the batch record in one round trip, all or
        nothing: False (nothing stored) when `owner` would pass `max_active` (> 0) tasks in
        flight. The batch record expires TASK_TTL after now."""
        args: list[str | int | float] = [max_active, now_ms(), batch_json, self.ttl_s,
                                         c.WAKE_CHANNEL]
        for record in records:
            args += [record.task_id, json.dumps(record.to_dict()),
                     ready_score(record.priority, record.sequence)]
        stored = await self._create_batch(
            keys=[*admit_keys(), c.ACTIVE_KEY.format(tenant=owner) if owner else "",
                  c.BATCH_KEY.format(batch_id=batch_id),
                  *(self.key(record.task_id) for record in records)],
            args=args)
        return bool(int(stored))

    async def get_batch(self, batch_id: str) -> str | None:
        raw = await self.redis.get(c.BATCH_KEY.format(batch_id=batch_id))
        return None if raw is None else _text(raw)

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        """Several records in one MGET (None for one that expired)."""
        raws = await self.redis.mget([self.key(t) for t in task_ids]) if task_ids else []
        return [TaskRecord.from_dict(json.loads(raw)) if raw else None for raw in raws]

    async def unadmitted(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Accepted tasks no admission message has taken after a while (the gateway died
        between storing one and sending its message, say)."""
        found = await self.redis.zrangebyscore(c.ACCEPTED_KEY, "-inf",
                                               now_ms() - int(older_than_s * 1000), start=0,
                                               num=limit)
        return [t.decode() if isinstance(t, bytes) else str(t) for t in found]

    async def get(self, task_id: str) -> TaskRecord | None:
        raw = await self.redis.get(self.key(task_id))
        return TaskRecord.from_dict(json.loads(raw)) if raw else None

    async def update(self, task_id: str, change: Callable[[TaskRecord], TaskRecord]
                     ) -> TaskRecord | None:
        """Apply a transition atomically (optimistic); `change` may raise to abort."""
        key = self.key(task_id)
        async with self.redis.pipeline() as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    record = TaskRecord.from_dict(json.loads(raw))
                    new = change(record)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new.final:
                        pipe.set(key, json.dumps(new.to_dict()), ex=self.ttl_s)
                        if new.owner:  # no longer counts against its key's cap
                            pipe.zrem(c.ACTIVE_KEY.format(tenant=new.owner), task_id)
                    else:
                        pipe.set(key, json.dumps(new.to_dict()))
                    # Its events, in the same transaction: a stream never misses one
                    events = c.TASK_EVENTS_KEY.format(task_id=task_id)
                    for name, data in events_between(record, new):
                        pipe.xadd(events, {"event": name, "data": json.dumps(data)},
                                  maxlen=EVENTS_MAX, approximate=True)
                    if new.final:
                        pipe.expire(events, self.ttl_s)
                    await pipe.execute()
                    observe_transition(record, new)
                    return new
                except WatchError:
                    continue

    # --- events (GET /api/v1/tasks/{id}/events) -------------------------------------------------
    async def record_and_cursor(self, task_id: str) -> tuple[TaskRecord | None, str]:
        """The record and the id of its last event, read together (what a stream starts from:
        the state now, then every event after that id)."""
        events = c.TASK_EVENTS_KEY.format(task_id=task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.key(task_id))
            pipe.xrevrange(events, count=1)
            raw, last = await pipe.execute()
        record = None if raw is None else TaskRecord.from_dict(json.loads(raw))
        return record, (_text(last[0][0]) if last else "0-0")

    async def events_after(self, task_id: str, after: str, block_ms: int
                           ) -> list[tuple[str, str, str]]:
        """(id, event, JSON data) of the events after `after`, waiting up to `block_ms` for
        the first one."""
        answer: Any = await self.redis.xread(
            {c.TASK_EVENTS_KEY.format(task_id=task_id): after}, count=EVENTS_READ,
            block=block_ms)
        found = []
        for _, entries in answer or []:
            for entry_id, fields in entries:
                values = {_text(k): _text(v) for k, v in fields.items()}
                found.append((_text(entry_id), values["event"], values["data"]))
        return found

    # --- the ready queue and slots -------------------------------------------------------------
    async def enqueue_ready(self, record: TaskRecord) -> None:
        """Back in line at its original place (a task whose node failed does not go last)."""
        await self.redis.zadd(c.READY_KEY, {record.task_id: ready_score(record.priority,
                                                                         record.sequence)})

    async def admit(self, record: TaskRecord) -> bool:
        """The admission step, for the sweeper (the `admit` actor runs the same script)."""
        added = await self._admit(keys=admit_keys(), args=[
            record.task_id, ready_score(record.priority, record.sequence)])
        return bool(added)

    async def forget_accepted(self, task_id: str) -> None:
        await self.redis.zrem(c.ACCEPTED_KEY, task_id)

    async def remove_ready(self, task_id: str) -> bool:
        return bool(await self.redis.zrem(c.READY_KEY, task_id))

    async def ready_count(self) -> int:
        return int(await self.redis.zcard(c.READY_KEY))

    async def oldest_waiting_ms(self, sample: int = 100) -> int | None:
        """Acceptance time (ms) of the oldest waiting task, from both ends of the ready queue
        (the best and the lowest priorities): a starved low-priority task shows too."""
        ends = await self.redis.zrange(c.READY_KEY, 0, sample - 1, withscores=True) + \
            await self.redis.zrange(c.READY_KEY, -sample, -1, withscores=True)
        if not ends:
            return None
        return min(int(entry[1]) % _SEQ_SPAN for entry in ends) + _EPOCH_MS

    async def peek_ready(self, count: int) -> list[str]:
        """The first `count` waiting tasks, best first."""
        found = await self.redis.zrange(c.READY_KEY, 0, count - 1)
        return [t.decode() if isinstance(t, bytes) else str(t) for t in found]

    async def bind(self, task_id: str, node: str, slots: int, worker: str,
                   lease_s: float) -> bool:
        bound = await self._bind(keys=[c.READY_KEY, c.SLOTS_KEY.format(node=node),
                                       c.LEASES_KEY, c.BOUND_KEY],
                                 args=[slots, worker, now_ms() + int(lease_s * 1000), node,
                                       task_id])
        return bool(bound)

    async def slots_used(self, nodes: list[str]) -> dict[str, int]:
        if not nodes:
            return {}
        counts = await self._slots_used(keys=[c.SLOTS_KEY.format(node=node) for node in nodes])
        return dict(zip(nodes, (int(n) for n in counts), strict=True))

    async def release(self, node: str, task_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(c.SLOTS_KEY.format(node=node), task_id)
            pipe.zrem(c.LEASES_KEY, task_id)
            pipe.hdel(c.BOUND_KEY, task_id)
            await pipe.execute()

    async def renew(self, task_ids: list[str], lease_s: float) -> None:
        if task_ids:
            expiry = now_ms() + int(lease_s * 1000)
            await self.redis.zadd(c.LEASES_KEY, {t: expiry for t in task_ids}, xx=True)

    async def lapsed(self, limit: int = 50) -> list[str]:
        found = await self.redis.zrangebyscore(c.LEASES_KEY, "-inf", now_ms(), start=0, num=limit)
        return [t.decode() if isinstance(t, bytes) else str(t) for t in found]

    async def adopt(self, task_id: str, worker: str, lease_s: float) -> str | None:
        """Take over a lapsed lease; answers the node holding the task's slot ("" if none),
        or None when another worker won or the lease was renewed."""
        node = await self._adopt(keys=[c.LEASES_KEY, c.BOUND_KEY],
                                 args=[task_id, now_ms(), now_ms() + int(lease_s * 1000), worker,
                                       c.SLOTS_KEY.format(node="")])
        if node is None:
            return None
        return node.decode() if isinstance(node, bytes) else str(node)

    # --- node snapshots and object_info, for the gateway ---------------------------------------
    async def publish_nodes(self, snapshots: dict[str, dict[str, Any]]) -> None:
        if snapshots:
            await self.redis.hset(c.NODES_KEY, mapping={k: json.dumps(v)
                                                        for k, v in snapshots.items()})

    async def forget_node(self, node: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(c.NODES_KEY, node)
            pipe.hdel(c.OBJECT_INFO_KEY, node)
            await pipe.execute()

    async def nodes(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(c.NODES_KEY)
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    async def publish_object_info(self, node: str, info: dict[str, Any]) -> None:
        await self.redis.hset(c.OBJECT_INFO_KEY, node, json.dumps(info))

    async def object_info(self, nodes: list[str]) -> dict[str, Any]:
        """The node classes every given node knows (their union; a later node adds)."""
        merged: dict[str, Any] = {}
        if nodes:
            for raw in await self.redis.hmget(c.OBJECT_INFO_KEY, nodes):
                if raw:
                    merged.update(json.loads(raw))
        return merged
