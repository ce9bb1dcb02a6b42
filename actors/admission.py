"""The `admit` actor: a new task enters the ready queue, where workers bind it to a node slot.

Declared on the broker built by actors.broker (import that first). Idempotent (one Lua script
checks the ready queue, leases and slots), so a redelivered message never queues a task twice.
"""

from __future__ import annotations

import json
from typing import Any

import dramatiq

from actors.broker import ADMIT_ACTOR
from actors.store import ADMIT_LUA, admit_keys, ready_score
from comfy_service import constants as c

_scripts: dict[int, Any] = {}


@dramatiq.actor(actor_name=ADMIT_ACTOR, queue_name=c.ADMIT_QUEUE, max_retries=20,
                min_backoff=100, max_backoff=5_000)
def admit(task_id: str) -> None:
    client = dramatiq.get_broker().client  # type: ignore[attr-defined]
    raw = client.get(c.TASK_KEY.format(task_id=task_id))
    if raw is None or json.loads(raw)["status"] != "queued":
        client.zrem(c.ACCEPTED_KEY, task_id)
        return
    record = json.loads(raw)
    script = _scripts.get(id(client)) or _scripts.setdefault(id(client),
                                                              client.register_script(ADMIT_LUA))
    score = ready_score(int(record.get("priority") or 0), int(record.get("sequence") or 0))
    if script(keys=admit_keys(), args=[task_id, score]):
        client.publish(c.WAKE_CHANNEL, task_id)
