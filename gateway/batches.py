"""POST, GET and DELETE /api/v1/batches: many generate requests accepted, followed and cancelled
as one. Expanding a batch body and summarising its tasks are pure; the handlers reuse the
generate checks item by item and store the whole batch in one Redis call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors import tasks
from actors.store import acceptance_sequence
from comfy_service import metrics
from comfy_service.errors import (
    BatchNotFound,
    BatchTooLarge,
    QuotaExceeded,
    ServiceError,
    TaskFinished,
    TaskNotFound,
    ValidationFailed,
    WorkflowNotFound,
)
from comfy_service.logs import event, request_id_var
from comfy_service.templates import FieldError, Template
from gateway.body import read_json
from gateway.generate import DEFAULT_WORKFLOW, new_record, new_task_id, parse_generate
from gateway.quotas import QUOTA_RETRY_S

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway")

SEED_PARAM = "seed"   # the template parameter vary_seed counts up
COUNT_FORM = frozenset({"request", "count", "vary_seed"})
CANCEL_CONCURRENCY = 16  # cancels of one batch in flight at once
EXPIRED = "expired"   # a task whose record is gone (it outlived TASK_TTL after it ended)
# Generate fields a batch item may not carry yet: a webhook is registered per task around
# TaskStore.create, which the batch script does not do (accepting one would never deliver it).
NOT_IN_BATCHES = ("webhook",)


@dataclass(frozen=True)
class BatchRecord:
    """What `cs:batch:<id>` holds: its tasks in request order, and whose they are."""

    batch_id: str
    created_at: str
    task_ids: tuple[str, ...]
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "created_at": self.created_at,
                "task_ids": list(self.task_ids), "owner": self.owner}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRecord:
        return cls(data["batch_id"], data["created_at"], tuple(data["task_ids"]),
                   data.get("owner"))


def _fail(errors: list[FieldError]) -> ValidationFailed:
    return ValidationFailed("the batch is not valid", {"fields": [e.as_dict() for e in errors]})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(count: int, max_batch: int) -> None:
    if count > max_batch:
        raise BatchTooLarge(f"a batch holds at most {max_batch} tasks, not {count}: split it",
                            {"max_batch": max_batch, "requested": count})


def expand(body: Any, max_batch: int, templates: Mapping[str, Template],
           draw_seed: Callable[[int], int]) -> list[tuple[str, Any]]:
    """The generate bodies a batch body stands for, each with the field it came from
    (`requests[3]`, or `request` for every copy of the count form). Raises ValidationFailed
    (422) for a malformed batch, BatchTooLarge (413) past `max_batch`."""
    if not isinstance(body, dict):
        raise _fail([FieldError("body", "must be a JSON object")])
    allowed = {"requests"} if "requests" in body else COUNT_FORM
    errors = [FieldError(key, "unknown field (give requests, or request with count)")
              for key in sorted(set(body) - allowed)]
    if "requests" in body:
        items = body["requests"]
        if not isinstance(items, list) or not items:
            errors.append(FieldError("requests", "must be a non-empty list of generate bodies"))
        if errors:
            raise _fail(errors)
        _check_size(len(items), max_batch)
        return [(f"requests[{index}]", item) for index, item in enumerate(items)]
    if "request" not in body:
        errors.append(FieldError("request", "is required (or give requests, a list)"))
    count, vary = body.get("count"), body.get("vary_seed", False)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        errors.append(FieldError("count", "must be an integer >= 1"))
    if not isinstance(vary, bool):
        errors.append(FieldError("vary_seed", "must be true or false"))
    if errors or not isinstance(count, int):
        raise _fail(errors)
    _check_size(count, max_batch)
    copies = seeded(body["request"], count, templates, draw_seed) if vary \
        else [body["request"]] * count
    return [("request", copy) for copy in copies]


def seeded(item: Any, count: int, templates: Mapping[str, Template],
           draw_seed: Callable[[int], int]) -> list[Any]:
    """`count` copies of a generate body, copy i with seed + i (wrapping within the seed's
    bounds; an absent seed is drawn first) when its template has a `seed` parameter. Anything
    else is copied as it is, for validation to judge."""
    spec = _seed_spec(item, templates)
    params = item.get("params", {}) if spec is not None else None
    if spec is None or not isinstance(params, dict):
        return [item] * count
    low, high = int(spec.get("min", 0)), int(spec["max"])
    seed = params.get(SEED_PARAM)
    if seed is None:
        seed = draw_seed(high)
    if not _is_int(seed) or not low <= seed <= high:
        return [item] * count
    return [{**item, "params": {**params, SEED_PARAM: low + (seed - low + i) % (high - low + 1)}}
            for i in range(count)]


def _seed_spec(item: Any, templates: Mapping[str, Template]) -> Mapping[str, Any] | None:
    if not isinstance(item, dict) or "workflow_json" in item:
        return None
    name = item.get("workflow", DEFAULT_WORKFLOW)
    template = templates.get(name) if isinstance(name, str) else None
    spec = template.params.get(SEED_PARAM) if template is not None else None
    return spec if spec is not None and spec["type"] == "integer" else None


def item_failure(where: str, error: ServiceError) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """One invalid item's share of the batch's 422: its fields named from the batch body
    (`requests[3].params.steps`), and what else its error said (node_errors, a cycle, ...)."""
    details = error.details if isinstance(error.details, dict) else {}
    if isinstance(error, WorkflowNotFound):
        return [{"field": f"{where}.workflow", "message": error.message}], details
    fields = [{"field": where if f["field"] == "body" else f"{where}.{f['field']}",
               "message": f["message"]} for f in details.get("fields", [])]
    rest = {key: value for key, value in details.items() if key != "fields"}
    return fields or [{"field": where, "message": error.message}], rest


def not_in_batches(item: Any) -> ValidationFailed | None:
    """An item carrying a field batches do not take yet (pure)."""
    found = [key for key in NOT_IN_BATCHES if isinstance(item, dict) and key in item]
    return _fail([FieldError(key, "is not supported in a batch yet: send this request to "
                                  "POST /api/v1/generate") for key in found]) if found else None


def batch_invalid(failures: Sequence[tuple[str, ServiceError]]) -> ValidationFailed:
    """All the items' failures as one 422 (the count form's copies fail alike: named once)."""
    fields: list[dict[str, str]] = []
    items: dict[str, Any] = {}
    for where, error in failures:
        named, rest = item_failure(where, error)
        fields += [field for field in named if field not in fields]
        if rest:
            items[where] = rest
    count = len({where for where, _ in failures})
    return ValidationFailed(f"the batch is not valid ({count} invalid item{'s' * (count > 1)}); "
                            "nothing was stored", {"fields": fields, "items": items})


def summarise(batch: BatchRecord, records: Sequence[tasks.TaskRecord | None]) -> dict[str, Any]:
    """The GET /api/v1/batches/{id} body: how many tasks are in each status, and each task."""
    counts = dict.fromkeys((tasks.QUEUED, tasks.RUNNING, tasks.SUCCEEDED, tasks.FAILED,
                            tasks.CANCELLED), 0)
    entries: list[dict[str, Any]] = []
    for task_id, record in zip(batch.task_ids, records, strict=True):
        if record is None:
            entries.append({"task_id": task_id, "status": EXPIRED, "outputs": []})
            continue
        counts[record.status] += 1
        entries.append({"task_id": task_id, "status": record.status,
                        "outputs": list(record.outputs)})
    return {"batch_id": batch.batch_id, "created_at": batch.created_at,
            "total": len(batch.task_ids), "counts": counts, "tasks": entries}


class Batches:
    """The batch handlers, on the gateway's store, checks and single-task cancel."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def create(self, request: Request) -> Response:
        gateway = self.gateway
        caller = await gateway.admit_request(request)  # one request against the key's rate
        body, _ = await read_json(request, gateway.settings.max_body_bytes)
        items = expand(body, gateway.settings.max_batch, gateway.templates, _draw_seed)
        classes = await gateway.node_classes()
        sequence, request_id = acceptance_sequence(), request_id_var.get()
        records: list[tasks.TaskRecord] = []
        failures: list[tuple[str, ServiceError]] = []
        for index, (where, item) in enumerate(items):
            task_id = new_task_id()
            if (refused := not_in_batches(item)) is not None:
                failures.append((where, refused))
                continue
            try:
                parsed = parse_generate(item, gateway.templates, classes, _draw_seed, task_id)
                await gateway.check_inputs(parsed.graph, caller.tenant, item)
            except (ValidationFailed, WorkflowNotFound) as exc:
                failures.append((where, exc))
                continue
            # sequence + index: the batch runs in its own order within a priority
            records.append(new_record(parsed, task_id, request_id, sequence + index,
                                      caller.tenant))
        if failures:
            raise batch_invalid(failures)
        batch = BatchRecord(uuid.uuid4().hex, tasks.utc_now(),
                            tuple(r.task_id for r in records), caller.tenant)
        if not await gateway.store.create_batch(batch.batch_id, json.dumps(batch.to_dict()),
                                                records, caller.tenant,
                                                caller.limits.max_active):
            raise QuotaExceeded(
                f"this batch of {len(records)} would take this API key past "
                f"{caller.limits.max_active} tasks queued or running; wait for some to finish",
                QUOTA_RETRY_S, {"max_active": caller.limits.max_active, "batch": len(records)})
        for record in records:
            metrics.TASKS_ACCEPTED.labels(record.workflow or "custom").inc()
        event(log, "batch.accepted", batch_id=batch.batch_id, tasks=len(records))
        return JSONResponse({"batch_id": batch.batch_id, "task_ids": list(batch.task_ids),
                             "created_at": batch.created_at}, status_code=202,
                            headers={"Location": f"/api/v1/batches/{batch.batch_id}"})

    async def get(self, request: Request) -> Response:
        tenant = (await self.gateway.admit_request(request)).tenant
        batch = await self._batch(request.path_params["batch_id"], tenant)
        records = await self.gateway.store.get_many(list(batch.task_ids))
        return JSONResponse(summarise(batch, records))

    async def cancel(self, request: Request) -> Response:
        """Cancel every task that has not ended; 200 when all have, 202 while running ones
        are being interrupted on their nodes."""
        tenant = (await self.gateway.admit_request(request)).tenant
        batch = await self._batch(request.path_params["batch_id"], tenant)
        store = self.gateway.store
        records = await store.get_many(list(batch.task_ids))
        limit = asyncio.Semaphore(CANCEL_CONCURRENCY)

        async def cancel_one(task_id: str) -> None:
            async with limit:
                with contextlib.suppress(TaskFinished, TaskNotFound):  # it ended meanwhile
                    await self.gateway.cancel(task_id)
        await asyncio.gather(*(cancel_one(r.task_id) for r in records
                               if r is not None and not r.final))
        summary = summarise(batch, await store.get_many(list(batch.task_ids)))
        event(log, "batch.cancel_requested", batch_id=batch.batch_id)
        return JSONResponse(summary, status_code=202 if summary["counts"][tasks.RUNNING] else 200)

    async def _batch(self, batch_id: str, tenant: str | None) -> BatchRecord:
        raw = await self.gateway.store.get_batch(batch_id)
        batch = None if raw is None else BatchRecord.from_dict(json.loads(raw))
        # Another key's batch is answered exactly like one that does not exist.
        if batch is None or (tenant is not None and batch.owner != tenant):
            raise BatchNotFound(f"no batch {batch_id!r} (unknown, or expired TASK_TTL after "
                                "it was created)")
        return batch


def _draw_seed(limit: int) -> int:
    return secrets.randbelow(limit + 1)
