"""What a caller is told as a task moves (pure): the events of one record transition.

Every change of a task goes through TaskStore.update, which appends these events to the task's
Redis stream in the same transaction as the record, so a stream never misses or invents one
(GET /api/v1/tasks/{id}/events serves it, from any gateway process, whichever worker ran the
task). Events:

- state: status, node and attempts changed (queued -> bound to a node -> running, a failover
  back to queued, moved off a draining node)
- progress: value, max, fraction and the node, while running
- outputs: the stored outputs, when the task succeeded
- end: the final state (succeeded, failed with its error, cancelled); nothing follows it
"""

from __future__ import annotations

from typing import Any

from actors.tasks import TaskRecord

STATE, PROGRESS, OUTPUTS, END = "state", "progress", "outputs", "end"


def state_of(record: TaskRecord) -> dict[str, Any]:
    return {"task_id": record.task_id, "status": record.status, "node": record.node,
            "attempts": record.attempts, "started_at": record.started_at}


def ending(record: TaskRecord) -> dict[str, Any]:
    """The `end` event's data: the final state, when and why."""
    return {**state_of(record), "finished_at": record.finished_at, "error": record.error}


def final_events(record: TaskRecord) -> list[tuple[str, dict[str, Any]]]:
    """What tells a caller how a finished task ended: its outputs, if any, then `end`."""
    found: list[tuple[str, dict[str, Any]]] = []
    if record.outputs:
        found.append((OUTPUTS, {"outputs": list(record.outputs)}))
    return [*found, (END, ending(record))]


def events_between(old: TaskRecord, new: TaskRecord) -> list[tuple[str, dict[str, Any]]]:
    """The events that tell a caller how `old` became `new`, in order."""
    found: list[tuple[str, dict[str, Any]]] = []
    if (old.status, old.node, old.attempts) != (new.status, new.node, new.attempts) \
            and not new.final:
        found.append((STATE, state_of(new)))
    if new.progress is not None and new.progress != old.progress and not new.final:
        found.append((PROGRESS, {**new.progress, "node": new.node}))
    if new.final and not old.final:
        found.extend(final_events(new))
    return found
