"""What the client returns: frozen dataclasses built from the API's JSON bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class Output:
    index: int
    filename: str
    kind: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    url: str | None = None
    node_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Output:
        return cls(index=int(data["index"]), filename=str(data["filename"]),
                   kind=data.get("kind"), content_type=data.get("content_type"),
                   bytes=data.get("bytes"), sha256=data.get("sha256"), url=data.get("url"),
                   node_id=data.get("node_id"))


@dataclass(frozen=True)
class Progress:
    """What a wait() callback is told: the task's status and how far its sampling is."""

    task_id: str
    status: str
    fraction: float | None = None
    value: float | None = None
    max: float | None = None
    node: str | None = None


@dataclass(frozen=True)
class Task:
    task_id: str
    status: str
    workflow: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    node: str | None = None
    progress: Progress | None = None
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    outputs: tuple[Output, ...] = ()
    error: TaskError | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        task_id, status = str(data["task_id"]), str(data["status"])
        progress = data.get("progress")
        error = data.get("error")
        return cls(
            task_id=task_id, status=status, workflow=data.get("workflow"),
            params=dict(data.get("params") or {}), node=data.get("node"),
            progress=progress_of(task_id, status, progress, data.get("node")) if progress
            else None,
            attempts=int(data.get("attempts") or 0), created_at=data.get("created_at"),
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            outputs=tuple(Output.from_dict(o) for o in data.get("outputs") or ()),
            error=TaskError(str(error.get("code")), str(error.get("message")),
                            error.get("details")) if error else None)


def progress_of(task_id: str, status: str, progress: dict[str, Any],
                node: str | None) -> Progress:
    return Progress(task_id, status, progress.get("fraction"), progress.get("value"),
                    progress.get("max"), progress.get("node", node))


@dataclass(frozen=True)
class Upload:
    upload_id: str
    ref: str  # what a template's image parameter names: "upload:<id>"
    content_type: str
    bytes: int
    sha256: str
    created_at: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Upload:
        return cls(str(data["upload_id"]), str(data["ref"]), str(data["content_type"]),
                   int(data["bytes"]), str(data["sha256"]), data.get("created_at"))


@dataclass(frozen=True)
class Node:
    name: str
    healthy: bool
    availability: str | None = None
    slots: int | None = None
    slots_used: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        return cls(str(data.get("name")), bool(data.get("healthy")), data.get("availability"),
                   data.get("slots"), data.get("slots_used"), data)


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str | None
    params: dict[str, dict[str, Any]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workflow:
        return cls(str(data["name"]), data.get("description"), dict(data.get("params") or {}))


@dataclass(frozen=True)
class GenerateRequest:
    """One generate body: a template by name with its params, or an API-format graph (dict)."""

    workflow: str | dict[str, Any] = "txt2img"
    params: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    timeout_s: float | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"workflow_json": self.workflow} if isinstance(self.workflow, dict) \
            else {"workflow": self.workflow, "params": self.params}
        if self.priority is not None:
            body["priority"] = self.priority
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        return body


@dataclass(frozen=True)
class BatchTask:
    task_id: str
    status: str  # a task's status, or "expired" once its record is gone
    outputs: tuple[Output, ...] = ()


@dataclass(frozen=True)
class Batch:
    """POST /batches answers its id and task ids; GET and DELETE add counts and each task."""

    batch_id: str
    task_ids: tuple[str, ...]
    created_at: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    tasks: tuple[BatchTask, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        tasks = tuple(BatchTask(str(t["task_id"]), str(t["status"]),
                                tuple(Output.from_dict(o) for o in t.get("outputs") or ()))
                      for t in data.get("tasks") or ())
        task_ids = tuple(data.get("task_ids") or (t.task_id for t in tasks))
        return cls(str(data["batch_id"]), task_ids, data.get("created_at"),
                   dict(data.get("counts") or {}), tasks)
