"""Every API call as an Operation (protocol.py): request building and answer parsing, no I/O."""

from __future__ import annotations

import hashlib
import mimetypes
import pathlib
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from comfy_service.client.errors import ChecksumMismatch
from comfy_service.client.models import Batch, GenerateRequest, Node, Output, Task, Upload, Workflow
from comfy_service.client.protocol import Call, Close, Operation, ReadChunk, RetryPolicy, exchange, json_of

API = "/api/v1"


def task_path(task_id: str, tail: str = "") -> str:
    return f"{API}/tasks/{quote(task_id, safe='')}{tail}"


def generate_call(request: GenerateRequest, idempotency_key: str | None) -> Call:
    """POST /generate. Without an idempotency key one is made, so a retry after a broken
    connection never submits the task twice."""
    return Call("POST", f"{API}/generate", json=request.body(),
                headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})


def generate(call: Call, policy: RetryPolicy) -> Operation[Task]:
    return Task.from_dict((yield from json_of(call, policy)))


def get_task(task_id: str, policy: RetryPolicy) -> Operation[Task]:
    return Task.from_dict((yield from json_of(Call("GET", task_path(task_id)), policy)))


def cancel(task_id: str, policy: RetryPolicy) -> Operation[Task]:
    return Task.from_dict((yield from json_of(Call("DELETE", task_path(task_id)), policy)))


def batch_call(requests: GenerateRequest | Sequence[GenerateRequest], count: int | None,
               vary_seed: bool) -> Call:
    """POST /batches: several requests, or `count` copies of one (seeds counting up with
    `vary_seed`). Not resent after a broken connection: a batch has no idempotency key."""
    if isinstance(requests, GenerateRequest):
        body: dict[str, Any] = {"request": requests.body(), "count": count or 1,
                                "vary_seed": vary_seed}
    else:
        body = {"requests": [r.body() for r in requests]}
    return Call("POST", f"{API}/batches", json=body, repeatable=False)


def batch(call: Call, policy: RetryPolicy) -> Operation[Batch]:
    return Batch.from_dict((yield from json_of(call, policy)))


def get_batch(batch_id: str, policy: RetryPolicy, method: str = "GET") -> Operation[Batch]:
    """GET the batch's tasks, or DELETE: cancel those that have not ended."""
    call = Call(method, f"{API}/batches/{quote(batch_id, safe='')}")
    return Batch.from_dict((yield from json_of(call, policy)))


def nodes(policy: RetryPolicy) -> Operation[list[Node]]:
    body = yield from json_of(Call("GET", f"{API}/nodes"), policy)
    return [Node.from_dict(n) for n in body["nodes"]]


def workflows(policy: RetryPolicy) -> Operation[list[Workflow]]:
    body = yield from json_of(Call("GET", f"{API}/workflows"), policy)
    return [Workflow.from_dict(w) for w in body["workflows"]]


def upload(source: bytes | pathlib.Path | str, content_type: str | None,
           policy: RetryPolicy) -> Operation[Upload]:
    """POST /uploads with the file's bytes (the service recognises the image by them)."""
    if isinstance(source, bytes):
        data, guessed = source, None
    else:
        path = pathlib.Path(source)
        data, guessed = path.read_bytes(), mimetypes.guess_type(path.name)[0]
    kind = content_type or guessed or "application/octet-stream"
    call = Call("POST", f"{API}/uploads", content=data, headers={"Content-Type": kind})
    return Upload.from_dict((yield from json_of(call, policy)))


def target_path(directory: pathlib.Path, task_id: str, output: Output) -> pathlib.Path:
    """Where an output is saved: its file name (never a path the service chose), made unique
    with the task id when the directory already holds one of that name."""
    name = pathlib.PurePath(output.filename.replace("\\", "/")).name
    if not name or name.startswith("."):
        name = f"output-{output.index}"
    target = directory / name
    return directory / f"{task_id}-{name}" if target.exists() else target


def download(task: Task, directory: pathlib.Path, policy: RetryPolicy
             ) -> Operation[list[pathlib.Path]]:
    """Stream each output to `directory` (through a .part file), checking its sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    for output in task.outputs:
        call = Call("GET", task_path(task.task_id, f"/outputs/{output.index}"))
        yield from exchange(call, policy, stream=True)
        target = target_path(directory, task.task_id, output)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as file:
                while (chunk := (yield ReadChunk())) is not None:
                    digest.update(chunk)
                    file.write(chunk)
            yield Close()
            if output.sha256 and digest.hexdigest() != output.sha256:
                raise ChecksumMismatch(f"output {output.index} of task {task.task_id}: sha256 "
                                       f"{digest.hexdigest()}, the record says {output.sha256}")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        saved.append(target)
    return saved
