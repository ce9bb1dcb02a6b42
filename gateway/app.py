"""The Starlette gateway: REST API v1. HTTP in, records and messages out; it never talks to ComfyUI."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from actors import tasks
from actors.broker import admit_message, build_broker
from actors.retention import Retention
from actors.store import TaskStore, acceptance_sequence
from actors.uploads import UploadStore
from comfy_service import constants as c
from comfy_service import metrics
from comfy_service.availability import ACTIONS
from comfy_service.comfyui.object_info import NodeClass, parse_object_info
from comfy_service.errors import (
    IdempotencyConflict,
    MethodNotAllowed,
    OutputNotFound,
    RouteNotFound,
    ServiceError,
    TaskFinished,
    TaskNotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from comfy_service.inputs import find_refs
from comfy_service.logs import event, request_id_var
from comfy_service.media import output_type
from comfy_service.outputs import output_key
from comfy_service.redis_client import connect
from comfy_service.settings import Settings
from comfy_service.storage import StoreFailure, StoreMismatch, open_store
from comfy_service.templates import FieldError, Template, load_templates
from gateway.auth import bearer_key
from gateway.batches import Batches
from gateway.body import read_json
from gateway.events import EventStreams, resume_from
from gateway.generate import new_record, new_task_id, parse_generate, ref_field
from gateway.node_admin import NodeAdmin
from gateway.openapi import endpoint as openapi_endpoint
from gateway.quotas import UNLIMITED, Limits, RateLimiter, limits_for, over_quota, parse_key_limits
from gateway.uploads import new_upload, read_upload, upload_key
from gateway.webconsole import routes as console_routes
from gateway.webhooks import WebhookDesk

log = logging.getLogger("gateway")

CLASSES_TTL_S = 2.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Gateway:
    """What the handlers share: settings, templates, Redis, the task store and the broker."""

    def __init__(self, settings: Settings, templates: dict[str, Template]) -> None:
        self.settings = settings
        self.templates = templates
        self.redis = connect(settings.redis_url, socket_timeout=5)
        self.store = TaskStore(self.redis, settings.task_ttl_s)
        self.broker = build_broker(settings.redis_url)
        self.rate_limiter = RateLimiter(self.redis)
        self.default_limits = Limits(settings.rate_limit_per_s, settings.rate_limit_burst,
                                     settings.max_active_tasks)
        self.key_limits = parse_key_limits(settings.api_key_limits)
        self.blobs = open_store(settings)
        self.uploads = UploadStore(self.redis, settings.upload_ttl_s)
        self.retention = Retention(self.redis, self.blobs, settings.task_ttl_s)
        self.node_admin = NodeAdmin(settings)
        self.streams = EventStreams(settings)
        self.webhooks = WebhookDesk(settings, self.redis)
        self._classes: Mapping[str, NodeClass] = {}
        self._classes_at = -CLASSES_TTL_S

    async def close(self) -> None:
        await self.node_admin.close()
        await self.streams.aclose()
        await self.blobs.aclose()
        await self.redis.aclose()
        self.broker.close()

    # --- request helpers -----------------------------------------------------------------------
    def authorize(self, request: Request) -> Caller:
        """Who calls: their tenant (which key they hold) and limits; without keys, anyone."""
        if not self.settings.api_keys:
            return Caller(None, UNLIMITED)
        matched = bearer_key(request.headers.get("authorization", ""), self.settings.api_keys)
        if matched is None:
            raise Unauthorized("missing or invalid API key: send Authorization: Bearer <key>")
        return Caller(tenant_of(matched), limits_for(matched, self.default_limits,
                                                     self.key_limits,
                                                     self.settings.admin_api_keys))

    async def node_classes(self) -> Mapping[str, NodeClass]:
        """What the healthy nodes can run (their /object_info), re-read at most every
        CLASSES_TTL_S so the submit path stays cheap."""
        if time.monotonic() - self._classes_at > CLASSES_TTL_S:
            nodes = await self.store.nodes()
            info = await self.store.object_info(
                [name for name, snap in nodes.items() if snap.get("healthy")])
            self._classes, self._classes_at = parse_object_info(info), time.monotonic()
        return self._classes

    async def admit_request(self, request: Request) -> Caller:
        """Authorize, then take a token from the caller's request budget (429 past it)."""
        caller = self.authorize(request)
        if caller.tenant is not None:
            await self.rate_limiter.check(caller.tenant, caller.limits)
        return caller

    # --- handlers ------------------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        caller = await self.admit_request(request)
        tenant = caller.tenant
        body, _ = await read_json(request, self.settings.max_body_bytes)
        idempotency_key = request.headers.get(c.IDEMPOTENCY_HEADER)
        if idempotency_key:  # scoped per tenant: one key's replays never reveal another's tasks
            idempotency_key = f"{tenant or ''}:{idempotency_key}"
        body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            replay = await self._idempotent_replay(idempotency_key, body_hash)
            if replay is not None:
                return replay
        task_id = new_task_id()
        parsed = parse_generate(body, self.templates, await self.node_classes(),
                                lambda limit: secrets.randbelow(limit + 1), task_id,
                                webhooks=True)
        await self.check_inputs(parsed.graph, tenant, body)
        secret = None
        if parsed.webhook is not None:
            await self.webhooks.check(parsed.webhook)
            secret = self.webhooks.secret(request)
        record = new_record(parsed, task_id, request_id_var.get(), acceptance_sequence(), tenant,
                            secret)
        answer = {"task_id": task_id, "status": tasks.QUEUED, "created_at": record.created_at}
        idempotency = None
        if idempotency_key:
            idempotency = (self._idempotency_redis_key(idempotency_key),
                           json.dumps({"body_hash": body_hash, "answer": answer}))
        # One script stores the record, its idempotency answer and its place among the key's
        # tasks in flight, or nothing: no answer can ever name a task that was not stored.
        if record.webhook is not None:  # noted first: a gateway dying next loses nothing
            await self.webhooks.note(task_id)
        created, earlier = await self.store.create(record, caller.limits.max_active,
                                                   idempotency)
        if record.webhook is not None and not created:
            await self.webhooks.forget(task_id)
        if earlier is not None:  # the same key won a race with this request: replay it
            return self._replay(earlier, body_hash)
        if not created:
            raise over_quota(caller.limits)
        self.broker.enqueue(admit_message(task_id))
        metrics.TASKS_ACCEPTED.labels(parsed.workflow or "custom").inc()
        event(log, "task.accepted", task_id=task_id, workflow=parsed.workflow or "custom",
              priority=parsed.priority)
        return JSONResponse(answer, status_code=202,
                            headers={"Location": f"/api/v1/tasks/{task_id}"})

    async def check_inputs(self, graph: dict[str, Any], tenant: str | None,
                            body: dict[str, Any]) -> None:
        """Every `upload:<id>` the graph reads is an upload of this caller's (422 naming the
        field otherwise); each is then kept at least UPLOAD_TTL for the task."""
        refs = find_refs(graph)
        missing = []
        for ref in refs:
            upload = await self.uploads.get(ref.upload_id)
            if upload is None or not visible_to(upload, tenant):
                missing.append(FieldError(ref_field(body, ref),
                                          f"names no upload of yours (upload:{ref.upload_id} "
                                          f"is unknown or expired): POST /api/v1/uploads first"))
        if missing:
            raise ValidationFailed("the request names inputs that do not exist",
                                   {"fields": [error.as_dict() for error in missing]})
        if refs:
            await self.uploads.keep([ref.upload_id for ref in refs])

    async def upload(self, request: Request) -> Response:
        tenant = (await self.admit_request(request)).tenant
        data = await read_upload(request, self.settings.max_upload_bytes)
        record = new_upload(data, tenant)
        await self.retention.note("upload", record.upload_id, self.settings.upload_ttl_s)
        try:
            await self.blobs.put_bytes(upload_key(record), data, record.content_type)
        except StoreFailure as exc:
            raise Unavailable("the object store did not take the file; retry shortly",
                              {"reason": str(exc)}) from exc
        await self.uploads.save(record)
        event(log, "upload.stored", upload_id=record.upload_id, bytes=record.bytes,
              content_type=record.content_type)
        return JSONResponse(record.public(), status_code=201)

    def _idempotency_redis_key(self, idempotency_key: str) -> str:
        return c.IDEMPOTENCY_KEY.format(
            key_hash=hashlib.sha256(idempotency_key.encode()).hexdigest())

    async def _idempotent_replay(self, idempotency_key: str, body_hash: str) -> Response | None:
        raw = await self.redis.get(self._idempotency_redis_key(idempotency_key))
        return None if raw is None else self._replay(raw, body_hash)

    def _replay(self, raw: str | bytes, body_hash: str) -> Response:
        stored = json.loads(raw)
        if stored["body_hash"] != body_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with another body",
                                      {"task_id": stored["answer"]["task_id"]})
        answer = stored["answer"]
        return JSONResponse(answer, status_code=202,
                            headers={"Location": f"/api/v1/tasks/{answer['task_id']}"})

    async def webhook_secret(self, request: Request) -> Response:
        """GET /api/v1/webhook-secret: the caller's key's signing secret (never logged)."""
        await self.admit_request(request)
        return JSONResponse({"secret": self.webhooks.secret(request)},
                            headers={"Cache-Control": "no-store"})

    async def get_task(self, request: Request) -> Response:
        tenant = (await self.admit_request(request)).tenant
        record = await self._record(request.path_params["task_id"], tenant)
        return JSONResponse(record.public())

    async def task_events(self, request: Request) -> Response:
        """GET /api/v1/tasks/{id}/events: Server-Sent Events (gateway/events.py)."""
        tenant = (await self.admit_request(request)).tenant
        task_id = request.path_params["task_id"]
        record, cursor = await self.streams.store.record_and_cursor(task_id)
        if record is None or not visible_to(record, tenant):
            raise TaskNotFound(f"no task {task_id!r} (unknown, or expired after its retention)")
        after = resume_from(request.headers.get("last-event-id"))
        stream = await self.streams.open(tenant)
        return StreamingResponse(
            self.streams.follow(record, after or cursor, tenant, stream, after is not None),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _record(self, task_id: str, tenant: str | None) -> tasks.TaskRecord:
        record = await self.store.get(task_id)
        # Another tenant's task is answered exactly like a task that does not exist.
        if record is None or not visible_to(record, tenant):
            raise TaskNotFound(f"no task {task_id!r} (unknown, or expired after its retention)")
        return record

    async def cancel_task(self, request: Request) -> Response:
        tenant = (await self.admit_request(request)).tenant
        task_id = request.path_params["task_id"]
        await self._record(task_id, tenant)  # 404 unless the caller's
        record, ended_now = await self.cancel(task_id)
        return JSONResponse(record.public(), status_code=200 if ended_now else 202)

    async def cancel(self, task_id: str) -> tuple[tasks.TaskRecord, bool]:
        """Cancel a task (its own DELETE, or its batch's): the record, and whether it ended
        now (else its worker is interrupting it); TaskFinished if it succeeded or failed."""
        ended_now = False

        def cancel(record: tasks.TaskRecord) -> tasks.TaskRecord:
            nonlocal ended_now
            if record.status in (tasks.SUCCEEDED, tasks.FAILED):
                raise TaskFinished(f"task {task_id} already {record.status}",
                                   {"status": record.status})
            new, ended_now = tasks.cancel_requested(record, tasks.utc_now())
            return new
        record = await self.store.update(task_id, cancel)
        if record is None:
            raise TaskNotFound(f"no task {task_id!r}")
        await self.store.remove_ready(task_id)
        await self.redis.publish(c.CANCEL_CHANNEL, task_id)
        event(log, "task.cancel_requested", task_id=task_id, status=record.status)
        return record, ended_now

    async def get_output(self, request: Request) -> Response:
        tenant = (await self.admit_request(request)).tenant
        record = await self._record(request.path_params["task_id"], tenant)
        index = request.path_params["index"]
        if record.status != tasks.SUCCEEDED or not 0 <= index < len(record.outputs):
            raise OutputNotFound(f"task {record.task_id} has no output {index}",
                                 {"status": record.status, "outputs": len(record.outputs)})
        output = record.outputs[index]
        key = output_key(record.task_id, index, output["filename"])
        try:
            presigned = await self.blobs.presigned_url(key)
            if presigned is not None:
                return RedirectResponse(presigned, status_code=302)
            stored = await self.blobs.get(key)
        except StoreFailure as exc:
            raise Unavailable("the object store is unreachable; retry shortly",
                              {"reason": str(exc)}) from exc
        if stored is None:
            raise OutputNotFound(f"output {index} of task {record.task_id} is no longer stored")
        media = output_type(output["filename"])
        disposition = "inline" if media.kind != "file" else "attachment"
        return StreamingResponse(stored.chunks, media_type=media.content_type, headers={
            "Content-Length": str(stored.size),
            "Content-Disposition": f"{disposition}; filename*=utf-8''"
                                   f"{quote(output['filename'])}",
            "X-Content-Type-Options": "nosniff"})

    async def workflows(self, request: Request) -> Response:
        await self.admit_request(request)
        return JSONResponse({"workflows": [
            {"name": t.name, "description": t.description, "params": t.public_params()}
            for t in self.templates.values()]})

    async def nodes(self, request: Request) -> Response:
        await self.admit_request(request)
        snapshots = await self.store.nodes()
        return JSONResponse({"nodes": sorted(snapshots.values(), key=lambda n: n["name"])})

    async def node_action(self, request: Request) -> Response:
        """POST /api/v1/nodes/{node_id}/cordon|drain|uncordon (admin key only)."""
        caller = await self.admit_request(request)
        self.node_admin.check_allowed(request.headers.get("authorization", ""))
        node_id, action = request.path_params["node_id"], request.path_params["action"]
        if action not in ACTIONS:
            raise RouteNotFound(f"no route {request.url.path}")
        snapshots = await self.store.nodes()
        state = await self.node_admin.request(
            node_id, action, set(snapshots), f"{action} through the API by {caller.tenant}")
        return JSONResponse({"node": node_id, "requested": state,
                             "availability": snapshots[node_id].get("availability")},
                            status_code=202)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        await self.redis.ping()
        snapshots = await self.store.nodes()
        healthy = sum(1 for n in snapshots.values() if n.get("healthy"))
        return JSONResponse({"status": "ready", "redis": "ok", "nodes_healthy": healthy,
                             "nodes_total": len(snapshots),
                             "tasks_waiting": await self.store.ready_count()})

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


async def stop_when_orphaned(interval_s: float = 1.0) -> None:
    """With API_WORKERS > 1 each worker process is uvicorn's child: if that supervisor is
    SIGKILLed, stop (gracefully) instead of holding the port against the next gateway."""
    # The supervisor's pid as multiprocessing recorded it at spawn: correct even when the
    # supervisor died before this coroutine first ran.
    spawned_by = multiprocessing.parent_process()
    parent = spawned_by.pid if spawned_by is not None and spawned_by.pid else os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(interval_s)
    event(log, "gateway.orphaned", logging.WARNING, parent=parent, effect="stopping")
    os.kill(os.getpid(), signal.SIGTERM)


async def check_store(gateway: Gateway) -> None:
    """Once Redis answers, prove the store is the workers' (see BlobStore.check_shared); a
    local OUTPUT_DIR that is not theirs stops the gateway, saying why, rather than answer 404
    for every output. Redis being down at start is no reason not to start (503s until then)."""
    try:
        await gateway.blobs.wait_shared(gateway.redis)
    except StoreMismatch as exc:
        event(log, "gateway.store_mismatch", logging.ERROR, reason=str(exc), effect="stopping")
        os.kill(os.getpid(), signal.SIGTERM)


def tenant_of(api_key: str) -> str:
    """A stable, non-reversible id for an API key: what records and logs carry, never the key."""
    return hashlib.sha256(b"comfy-service tenant:" + api_key.encode()).hexdigest()[:16]


class _Owned(Protocol):
    @property
    def owner(self) -> str | None: ...


def visible_to(record: _Owned, tenant: str | None) -> bool:
    """Keys see their own tasks; without keys (tenant None) everything is one tenant's."""
    return tenant is None or record.owner == tenant


@dataclass(frozen=True)
class Caller:
    tenant: str | None  # None: the service runs without API keys
    limits: Limits


def _error_response(error: ServiceError) -> JSONResponse:
    headers = ({"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
               if isinstance(error, TooManyRequests) else None)
    return JSONResponse(error.as_body(), status_code=error.status, headers=headers)


class RequestContext:
    """ASGI middleware: X-Request-ID in and out, one access-log line and metrics per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.labels(route=name, status=str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route=name).observe(elapsed)
            event(log, "http.request", method=scope["method"], route=name, status=status,
                  duration_ms=round(elapsed * 1000, 2))
            request_id_var.reset(token)


def _guard(handler: Callable[[Request], Awaitable[Response]]
           ) -> Callable[[Request], Awaitable[Response]]:
    """Redis trouble is a 503 with our error body, never a 500."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except RedisError as exc:
            raise Unavailable("the task store (Redis) is unreachable; retry shortly",
                              {"reason": type(exc).__name__}) from exc
    return endpoint


def _counting_rejections(handler: Callable[[Request], Awaitable[Response]]
                         ) -> Callable[[Request], Awaitable[Response]]:
    """Refused generate requests, by their stable error code (a metric, not a log line)."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as exc:
            metrics.TASKS_REJECTED.labels(exc.code).inc()
            raise
    return endpoint


def create_app(settings: Settings, templates: dict[str, Template] | None = None) -> Starlette:
    gateway = Gateway(settings, templates if templates is not None
                      else load_templates(settings.workflows_dir))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store_check = asyncio.create_task(check_store(gateway))
        event(log, "gateway.started", host=settings.api_host, port=settings.api_port,
              auth=bool(settings.api_keys), store=gateway.blobs.kind,
              store_at=gateway.blobs.where)
        watch = asyncio.create_task(stop_when_orphaned()) if settings.api_workers > 1 else None
        try:
            yield
        finally:
            store_check.cancel()
            if watch is not None:
                watch.cancel()
            await gateway.close()

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return _error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return _error_response(MethodNotAllowed(f"{request.method} is not allowed here"))
        return _error_response(RouteNotFound(f"no route {request.url.path}"))

    async def unexpected(request: Request, exc: Exception) -> Response:
        event(log, "http.unhandled", logging.ERROR, exc_info=True, path=request.url.path)
        return _error_response(ServiceError("internal error; the request id is in the logs"))

    batches = Batches(gateway)
    routes = [
        Route("/api/v1/generate", _counting_rejections(_guard(gateway.generate)),
              methods=["POST"]),
        Route("/api/v1/batches", _counting_rejections(_guard(batches.create)), methods=["POST"]),
        Route("/api/v1/batches/{batch_id}", _guard(batches.get), methods=["GET"]),
        Route("/api/v1/batches/{batch_id}", _guard(batches.cancel), methods=["DELETE"]),
        Route("/api/v1/tasks/{task_id}", _guard(gateway.get_task), methods=["GET"]),
        Route("/api/v1/tasks/{task_id}", _guard(gateway.cancel_task), methods=["DELETE"]),
        Route("/api/v1/tasks/{task_id}/events", _guard(gateway.task_events), methods=["GET"]),
        Route("/api/v1/tasks/{task_id}/outputs/{index:int}", _guard(gateway.get_output),
              methods=["GET"]),
        Route("/api/v1/uploads", _guard(gateway.upload), methods=["POST"]),
        Route("/api/v1/workflows", _guard(gateway.workflows), methods=["GET"]),
        Route("/api/v1/nodes", _guard(gateway.nodes), methods=["GET"]),
        Route("/api/v1/webhook-secret", _guard(gateway.webhook_secret), methods=["GET"]),
        Route("/api/v1/nodes/{node_id}/{action}", _guard(gateway.node_action),
              methods=["POST"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", _guard(gateway.readyz), methods=["GET"]),
        Route("/metrics", gateway.metrics, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(gateway.templates, settings.max_body_bytes,
                                                settings.max_batch), methods=["GET"]),
        *console_routes(),  # GET / and /console/*: the web console (gateway/webconsole.py)
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ServiceError: service_error, HTTPException: http_error, Exception: unexpected})
    app.add_middleware(RequestContext)
    return app
