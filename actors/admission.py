"""The `admit` actor: a new task enters the ready queue, where workers bind it to a node slot.

Declared on the broker built by actors.broker (import that first). Idempotent, so a
redelivered message never queues a task twice.
"""

from __future__ import annotations

import json

import dramatiq

from actors.broker import ADMIT_ACTOR
from actors.store import ready_score
from comfy_service import constants as c

ADMITTED_KEY = c.KEY_PREFIX + "admitted:{task_id}"


@dramatiq.actor(actor_name=ADMIT_ACTOR, queue_name=c.ADMIT_QUEUE, max_retries=20,
                min_backoff=100, max_backoff=5_000)
def admit(task_id: str) -> None:
    client = dramatiq.get_broker().client  # type: ignore[attr-defined]
    raw = client.get(c.TASK_KEY.format(task_id=task_id))
    if raw is None:
        return
    record = json.loads(raw)
    if record["status"] != "queued":
        return
    if not client.set(ADMITTED_KEY.format(task_id=task_id), "1", nx=True, ex=7 * 24 * 3600):
        return  # already admitted: a redelivery
    score = ready_score(int(record.get("priority") or 0), int(record.get("sequence") or 0))
    client.zadd(c.READY_KEY, {task_id: score})
    client.publish(c.WAKE_CHANNEL, task_id)
