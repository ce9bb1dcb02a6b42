"""The one place the Dramatiq broker is built (before any actor is declared)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from comfy_service.constants import ADMIT_QUEUE

ADMIT_ACTOR = "admit"

# Dramatiq's Redis defaults gave back a SIGKILLed worker's message after 447-1169 s (60 s
# heartbeat timeout, then a 0.1 % maintenance roll); these bring it to seconds. Admission
# messages are tiny and idempotent, so an early redelivery costs nothing.
HEARTBEAT_TIMEOUT_MS = 5_000
MAINTENANCE_CHANCE = 1_000_000  # of 1,000,000: every fetch also requeues dead workers' messages


def build_broker(redis_url: str) -> RedisBroker:
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE, socket_timeout=10)
    dramatiq.set_broker(broker)
    return broker


def admit_message(task_id: str) -> dramatiq.Message[None]:
    """The message the gateway sends for a new task (it does not import the actor itself)."""
    return dramatiq.Message(queue_name=ADMIT_QUEUE, actor_name=ADMIT_ACTOR, args=(task_id,),
                            kwargs={}, options={})
