"""Task records and their state transitions (pure).

A task is queued until ComfyUI starts executing it on a node (running), and ends succeeded,
failed (with a reason) or cancelled. Binding it to a node does not change its status: a task
waiting in a node's ComfyUI queue is still queued, and can still be cancelled at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", \
    "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class InvalidTransition(Exception):
    """The record is not in a state that allows this change (usually: it already ended)."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    status: str
    graph: dict[str, Any] = field(repr=False)
    created_at: str
    workflow: str | None = None
    params: dict[str, Any] | None = None
    priority: int = 0
    timeout_s: float | None = None
    node: str | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    progress: dict[str, Any] | None = None
    outputs: tuple[dict[str, Any], ...] = ()
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    request_id: str | None = None
    sequence: int = 0  # acceptance order: first come, first served within a priority
    owner: str | None = None  # tenant id of the API key that created it (None: no auth)
    # The caller's webhook: url, events, and how its deliveries went (comfy_service/
    # webhook_policy.py); its signing secret apart, never shown.
    webhook: dict[str, Any] | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: the values are JSON already, and asdict's deep copy of the graph
        # was a third of the submit path's time.
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["outputs"] = list(self.outputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        values = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        values["outputs"] = tuple(values.get("outputs") or ())
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The GET /api/v1/tasks/{id} body."""
        return {
            "task_id": self.task_id, "status": self.status, "workflow": self.workflow,
            "params": self.params, "node": self.node, "progress": self.progress,
            "attempts": self.attempts, "created_at": self.created_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "outputs": list(self.outputs), "error": self.error,
            **({"webhook": self.webhook} if self.webhook is not None else {}),
        }


_FIELDS = dataclasses.fields(TaskRecord)
_FIELD_NAMES = frozenset(f.name for f in _FIELDS)


def _require(record: TaskRecord, *statuses: str) -> None:
    if record.status not in statuses:
        raise InvalidTransition(f"task {record.task_id} is {record.status}")


def bound(record: TaskRecord, node: str) -> TaskRecord:
    """Given a slot on `node`: one more attempt."""
    _require(record, QUEUED)
    return replace(record, node=node, attempts=record.attempts + 1)


def started(record: TaskRecord, at: str) -> TaskRecord:
    _require(record, QUEUED, RUNNING)
    if record.status == RUNNING:
        return record
    return replace(record, status=RUNNING, started_at=at)


def progressed(record: TaskRecord, value: float, maximum: float) -> TaskRecord:
    _require(record, RUNNING)
    fraction = round(value / maximum, 4) if maximum else 0.0
    return replace(record, progress={"value": value, "max": maximum, "fraction": fraction})


def succeeded(record: TaskRecord, outputs: list[dict[str, Any]], at: str) -> TaskRecord:
    _require(record, QUEUED, RUNNING)
    progress = record.progress and {**record.progress, "fraction": 1.0}
    return replace(record, status=SUCCEEDED, outputs=tuple(outputs), finished_at=at,
                   progress=progress, started_at=record.started_at or at)


def failed(record: TaskRecord, error: dict[str, Any], at: str) -> TaskRecord:
    _require(record, QUEUED, RUNNING)
    return replace(record, status=FAILED, error=error, finished_at=at)


def requeued(record: TaskRecord) -> TaskRecord:
    """Back to waiting for a slot after its node was lost; the attempt stays counted."""
    _require(record, QUEUED, RUNNING)
    return replace(record, status=QUEUED, node=None, started_at=None, progress=None)


def moved_back(record: TaskRecord) -> TaskRecord:
    """Taken off a draining node before it started: back in line, and the attempt it had there
    does not count (nothing ran)."""
    _require(record, QUEUED)
    return replace(record, node=None, attempts=max(0, record.attempts - 1))


def cancelled(record: TaskRecord, at: str) -> TaskRecord:
    _require(record, QUEUED, RUNNING, CANCELLED)
    if record.status == CANCELLED:
        return record
    return replace(record, status=CANCELLED, finished_at=at, cancel_requested=True)


def cancel_requested(record: TaskRecord, at: str) -> tuple[TaskRecord, bool]:
    """A client's DELETE. Returns the new record and whether it ended now (else: interrupting).

    Not yet executing (even if waiting in a node's queue): cancelled at once. Running: marked,
    and the worker that owns it interrupts it on its node, then records it cancelled.
    """
    if record.status == CANCELLED:
        return record, True
    _require(record, QUEUED, RUNNING)
    if record.status == QUEUED:
        return cancelled(record, at), True
    return replace(record, cancel_requested=True), False
