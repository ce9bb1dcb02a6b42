"""GET /openapi.json: the OpenAPI 3.1 document of REST API v1, built from the code's own data (pure).

Error codes come from the error classes, the `params` schemas from the workflow templates, and
the bounds from gateway/generate.py and gateway/limits.py, so the document cannot drift from
what the handlers do; tests/unit/test_openapi.py checks the rest against the app's routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from actors import tasks
from actors.store import PRIORITY_LIMIT
from comfy_service import availability
from comfy_service import constants as c
from comfy_service.errors import CodedError, ServiceError, TaskFailure
from comfy_service.media import OUTPUT_TYPES, UPLOAD_TYPES
from comfy_service.settings import Settings
from comfy_service.templates import Template
from comfy_service.webhook_policy import DEFAULT_EVENTS, EVENTS, MAX_URL_LENGTH
from gateway.batches import EXPIRED
from gateway.generate import DEFAULT_WORKFLOW, MAX_TIMEOUT_S
from gateway.limits import MAX_GRAPH_DEPTH, MAX_GRAPH_NODES, MAX_JSON_DEPTH

OPENAPI_VERSION = "3.1.0"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # gateway/app.py's _REQUEST_ID (a test pins it)
TASK_STATUSES = [tasks.QUEUED, tasks.RUNNING, tasks.SUCCEEDED, tasks.FAILED, tasks.CANCELLED]
# A bearer key when the service runs with API_KEYS, nothing otherwise.
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {}]
_PUBLIC: list[dict[str, list[str]]] = []


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [{"type": "null"}, schema]}


def _obj(properties: dict[str, Any], required: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    """A closed object: every answer's keys are known, so an unplanned key fails the fuzz."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}


# --- errors ------------------------------------------------------------------------------------

def _subclasses(cls: type[CodedError]) -> Iterator[type[CodedError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


UPLOAD_REF_PATTERN = "^upload:[0-9a-f]{32}$"


def _raised(base: type[CodedError]) -> Iterator[type[CodedError]]:
    """The base (raised as is for internal errors) and each subclass that names its own code;
    a subclass without one (TooManyRequests) only groups others."""
    yield base
    yield from (cls for cls in _subclasses(base) if "code" in vars(cls))


def error_codes() -> dict[int, list[str]]:
    """Each HTTP status a ServiceError answers with, and the stable codes it can carry."""
    by_status: dict[int, set[str]] = {}
    for cls in _raised(ServiceError):
        assert issubclass(cls, ServiceError)
        by_status.setdefault(cls.status, set()).add(cls.code)
    return {status: sorted(codes) for status, codes in sorted(by_status.items())}


def task_error_codes() -> list[str]:
    """The codes a failed task's `error` can carry."""
    return sorted({cls.code for cls in _raised(TaskFailure)})


def _error_schema(codes: list[str], what: str) -> dict[str, Any]:
    return _obj({"error": _obj({
        "code": {"type": "string", "enum": codes, "description": "Stable: never renamed."},
        "message": {"type": "string", "description": "For people; may change."},
        "details": {"description": f"{what}; null when there is nothing to add."}})})


def _error_response(status: int) -> str:
    return f"Error{status}"


# --- request bodies ----------------------------------------------------------------------------

def _scalar_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    kind = spec["type"]
    if kind == "enum":
        return {"enum": list(spec["choices"])}
    if kind == "image":
        return {"type": "string", "pattern": UPLOAD_REF_PATTERN}
    if kind not in ("string", "integer", "number"):
        raise ValueError(f"unknown parameter type {kind!r}")
    keywords = {"min_length": "minLength", "max_length": "maxLength", "pattern": "pattern",
                "min": "minimum", "max": "maximum", "multiple_of": "multipleOf"}
    return {"type": kind, **{keywords[k]: v for k, v in spec.items() if k in keywords}}


def param_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema for one template parameter spec (comfy_service/templates.py's types)."""
    notes = [spec.get("description", "")]
    if spec["type"] == "list":
        items = _obj({key: _scalar_schema(item) for key, item in spec["item"].items()})
        schema: dict[str, Any] = {"type": "array", "items": items}
        schema.update({k: spec[v] for k, v in (("minItems", "min_items"), ("maxItems", "max_items"))
                       if v in spec})
        if spec.get("unique"):
            notes.append(f"Each item's `{spec['unique']}` must be unique.")
        notes += [f"`{key}` must name an entry of `{item['ref']}`."
                  for key, item in spec["item"].items() if "ref" in item]
    else:
        schema = _scalar_schema(spec)
    if spec.get("random_default"):
        notes.append("Absent: a random one is drawn and recorded in the task.")
    elif not spec.get("required") and spec.get("default") is not None:
        schema["default"] = spec["default"]
    return {**schema, "description": " ".join(n for n in notes if n)}


def params_schema(template: Template) -> dict[str, Any]:
    return _obj({name: param_schema(spec) for name, spec in template.params.items()},
                required=[name for name, spec in template.params.items() if spec.get("required")],
                description=template.description)


def _options() -> dict[str, Any]:
    return {
        "priority": {"type": "integer", "minimum": -PRIORITY_LIMIT, "maximum": PRIORITY_LIMIT,
                     "default": 0, "description": "Higher runs first; FIFO within a priority."},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S,
                      "description": "Execution time limit in seconds (default: the service's)."},
        "webhook": _ref("schemas", "Webhook"),
    }


def webhook_schema() -> dict[str, Any]:
    return _obj({
        "url": {"type": "string", "maxLength": MAX_URL_LENGTH, "pattern": "^https?://",
                "description": "http(s); its host must resolve only to public addresses (no "
                               "loopback, private, link-local, multicast or cloud metadata "
                               "address, unless in WEBHOOK_ALLOW_HOSTS): 422 naming "
                               "`webhook.url` otherwise. Checked again before each delivery; "
                               "redirects are not followed."},
        "events": {"type": "array", "items": {"enum": list(EVENTS)}, "minItems": 1,
                   "uniqueItems": True, "default": list(DEFAULT_EVENTS),
                   "description": "The task's events to POST (as GET .../events names them)."}},
        required=["url"], description=(
            "POST /api/v1/generate only (not in a batch's items). The workers POST each "
            "chosen event of the task, in order, at least once, as JSON `{type: \"task.<event>\", "
            "timestamp, data}` signed per Standard Webhooks (webhook-id, stable across retries; "
            "webhook-timestamp; webhook-signature) with the key's secret from GET "
            "/api/v1/webhook-secret; a non-2xx answer or none within WEBHOOK_TIMEOUT_S is "
            "retried with exponential backoff for WEBHOOK_RETRY_FOR_S, then given up."))


def _component_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def generate_schemas(templates: Mapping[str, Template]) -> dict[str, dict[str, Any]]:
    """The generate body's schemas: one per template (`workflow` selects it) and workflow_json."""
    schemas: dict[str, dict[str, Any]] = {}
    variants = []
    for name, template in templates.items():
        key = _component_name(name)
        schemas[f"Params.{key}"] = params_schema(template)
        required = ["params"] if schemas[f"Params.{key}"]["required"] else []
        if name != DEFAULT_WORKFLOW:
            required.insert(0, "workflow")
        schemas[f"Generate.{key}"] = _obj(
            {"workflow": {"const": name,
                          "description": f"Template name (default {DEFAULT_WORKFLOW})."},
             "params": _ref("schemas", f"Params.{key}"), **_options()},
            required=required, title=f"workflow {name}")
        variants.append(_ref("schemas", f"Generate.{key}"))
    schemas["Webhook"] = webhook_schema()
    schemas["WorkflowJson"] = {
        "type": "object", "minProperties": 1, "maxProperties": MAX_GRAPH_NODES,
        "description": "An API-format ComfyUI graph ('Export (API)'), checked against the node "
                       "classes the cluster's nodes report; links may chain at most "
                       f"{MAX_GRAPH_DEPTH} nodes and may not form a cycle.",
        "additionalProperties": {"type": "object", "required": ["class_type", "inputs"],
                                 "properties": {"class_type": {"type": "string"},
                                                "inputs": {"type": "object"}}}}
    schemas["Generate.workflow_json"] = _obj(
        {"workflow_json": _ref("schemas", "WorkflowJson"), **_options()},
        required=["workflow_json"], title="workflow_json")
    variants.append(_ref("schemas", "Generate.workflow_json"))
    schemas["GenerateRequest"] = {
        "anyOf": variants,
        "description": f"A template with its params, or workflow_json. JSON nested at most "
                       f"{MAX_JSON_DEPTH} deep."}
    return schemas


def batch_schemas(max_batch: int) -> dict[str, dict[str, Any]]:
    """The two forms of a batch body: a list of generate bodies, or one body and a count."""
    generate = _ref("schemas", "GenerateRequest")
    return {
        "Batch.requests": _obj({"requests": {"type": "array", "items": generate, "minItems": 1,
                                             "maxItems": max_batch}}, title="requests"),
        "Batch.count": _obj(
            {"request": generate,
             "count": {"type": "integer", "minimum": 1, "maximum": max_batch},
             "vary_seed": {"type": "boolean", "default": False,
                           "description": "Copy i gets the request's seed + i (drawn first "
                                          "when absent) if its template has a `seed`."}},
            required=["request", "count"], title="request with count"),
        "BatchRequest": {"anyOf": [_ref("schemas", "Batch.requests"),
                                   _ref("schemas", "Batch.count")],
                         "description": f"At most {max_batch} tasks (MAX_BATCH; 413 "
                                        "batch_too_large beyond); all valid or none stored "
                                        "(a 422 names each bad field as requests[i].<field>)."}}


# --- answers -----------------------------------------------------------------------------------

def answer_schemas() -> dict[str, dict[str, Any]]:
    string, integer, number = {"type": "string"}, {"type": "integer"}, {"type": "number"}
    maybe = _nullable(string)
    output = _obj({"index": integer, "filename": string, "node_id": string,
                   "kind": {"enum": sorted({m.kind for m in OUTPUT_TYPES.values()} | {"file"})},
                   "url": string, "content_type": string, "bytes": integer, "sha256": string})
    spec = {"type": "object", "required": ["type", "required", "default"],
            "properties": {"type": {"enum": ["string", "integer", "number", "enum", "image",
                                                     "list"]},
                           "required": {"type": "boolean"}, "default": {},
                           "description": string}}
    task = {
        "task_id": string, "status": {"enum": TASK_STATUSES},
        "workflow": _nullable({"type": "string", "description": "null for workflow_json"}),
        "params": _nullable({"type": "object", "description": "With defaults filled in."}),
        "node": maybe,
        "progress": _nullable(_obj({"value": number, "max": number, "fraction": number})),
        "attempts": {"type": "integer", "minimum": 0}, "created_at": string,
        "started_at": maybe, "finished_at": maybe, "outputs": {"type": "array", "items": output},
        "error": _nullable(_error_schema(task_error_codes(), "What ComfyUI said")["properties"]
                           ["error"]),
        "webhook": _obj({
            "url": string, "events": {"type": "array", "items": {"enum": list(EVENTS)}},
            "delivered": integer, "given_up": integer,
            "attempts": {"type": "integer", "description": "Requests made, retries included."},
            "last_status": _nullable(integer), "last_error": maybe},
            description="Only for a task submitted with a webhook: how its deliveries went."),
    }
    return {
        "TaskAccepted": _obj({"task_id": string, "status": {"const": tasks.QUEUED},
                              "created_at": string}),
        "Task": _obj(task, required=[k for k in task if k != "webhook"]),
        "WebhookSecret": _obj({"secret": {"type": "string", "pattern": "^whsec_",
                                          "description": "Standard Webhooks secret (base64)."}}),
        "BatchAccepted": _obj({"batch_id": string, "task_ids": {"type": "array", "items": string},
                               "created_at": string}),
        "Batch": _obj({
            "batch_id": string, "created_at": string, "total": integer,
            "counts": _obj({status: integer for status in TASK_STATUSES}),
            "tasks": {"type": "array", "items": _obj({
                "task_id": string, "status": {"enum": [*TASK_STATUSES, EXPIRED]},
                "outputs": {"type": "array", "items": output}})}}),
        "Workflows": _obj({"workflows": {"type": "array", "items": _obj({
            "name": string, "description": string,
            "params": {"type": "object", "additionalProperties": spec}})}}),
        "Nodes": _obj({"nodes": {"type": "array", "items": _obj({
            "name": string, "url": string, "healthy": {"type": "boolean"}, "slots": integer,
            "slots_used": integer, "queue_remaining": integer, "worker": string,
            "availability": {"enum": list(availability.STATES)},
            "speed": {"type": "number", "description": "Relative speed the dispatcher uses "
                      "(1 = typical)."},
            "speed_source": {"enum": ["configured", "learned", "default"]},
            "speed_samples": integer,
            "gpu": _nullable(_obj({"uuid": string, "name": string, "util_pct": number,
                                   "vram_used_mb": number, "vram_total_mb": number},
                                  required=["uuid", "name"]))})}}),
        "NodeAvailability": _obj({"node": string,
                                  "requested": {"enum": list(availability.STATES)},
                                  "availability": _nullable({"enum": list(availability.STATES)})}),
        "Upload": _obj({"upload_id": string, "ref": {"type": "string",
                                                      "pattern": UPLOAD_REF_PATTERN},
                        "content_type": {"enum": list(UPLOAD_TYPES)}, "bytes": integer,
                        "sha256": string, "created_at": string}),
        "Health": _obj({"status": {"const": "ok"}}),
        "Ready": _obj({"status": {"const": "ready"}, "redis": {"const": "ok"},
                       "nodes_healthy": integer, "nodes_total": integer, "tasks_waiting": integer}),
        "Error": _error_schema(sorted({code for codes in error_codes().values() for code in codes}),
                               "Depends on the code"),
    }


def _json(schema: str, description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER), **headers},
            "content": {"application/json": {"schema": _ref("schemas", schema)}}}


def _operation(op_id: str, summary: str, ok: dict[str, Any], errors: tuple[int, ...],
               security: list[dict[str, list[str]]], params: tuple[str, ...] = (),
               **extra: Any) -> dict[str, Any]:
    responses = {**ok, **{str(s): _ref("responses", _error_response(s)) for s in (*errors, 500)}}
    parameters = [_ref("parameters", p) for p in (*params, REQUEST_ID_HEADER)]
    return {"operationId": op_id, "summary": summary, "security": security,
            "parameters": parameters, "responses": responses, **extra}


def _paths() -> dict[str, dict[str, Any]]:
    task = {"200": _json("Task", "The task.")}
    guarded = (401, 429, 503)  # every call with a key is counted against its request rate
    return {
        "/api/v1/generate": {"post": _operation(
            "generate", "Submit a task", {"202": _json(
                "TaskAccepted", "Accepted (or the first answer again, for a repeated "
                "Idempotency-Key and the same body).",
                Location={"description": "/api/v1/tasks/{task_id}", "required": True,
                          "schema": {"type": "string"}})},
            (*guarded, 400, 404, 409, 413, 415, 422), _AUTH, (c.IDEMPOTENCY_HEADER,),
            requestBody={"required": True, "content": {"application/json": {
                "schema": _ref("schemas", "GenerateRequest")}}})},
        "/api/v1/batches": {"post": _operation(
            "createBatch", "Submit many tasks at once", {"202": _json(
                "BatchAccepted", "Every task stored and queued, in the request's order.",
                Location={"description": "/api/v1/batches/{batch_id}", "required": True,
                          "schema": {"type": "string"}})},
            (*guarded, 400, 413, 415, 422), _AUTH,
            requestBody={"required": True, "content": {"application/json": {
                "schema": _ref("schemas", "BatchRequest")}}})},
        "/api/v1/batches/{batch_id}": {
            "get": _operation("getBatch", "A batch's counts by status, and each task",
                              {"200": _json("Batch", "The batch.")}, (*guarded, 404), _AUTH,
                              ("batch_id",)),
            "delete": _operation(
                "cancelBatch", "Cancel every task of a batch that has not ended",
                {"200": _json("Batch", "Every task has ended."),
                 "202": _json("Batch", "Running tasks are being interrupted on their nodes.")},
                (*guarded, 404), _AUTH, ("batch_id",))},
        "/api/v1/tasks/{task_id}": {
            "get": _operation("getTask", "A task's state and outputs", task, (*guarded, 404),
                              _AUTH, ("task_id",)),
            "delete": _operation(
                "cancelTask", "Cancel a task",
                {"200": _json("Task", "Cancelled now (it was not executing yet)."),
                 "202": _json("Task", "Running: being interrupted on its node.")},
                # 405: a task_id holding "/outputs/<n>" routes to the outputs path (GET only)
                (*guarded, 404, 405, 409), _AUTH, ("task_id",))},
        "/api/v1/tasks/{task_id}/events": {"get": _operation(
            "taskEvents", "A task's events as Server-Sent Events", {"200": {
                "description": "text/event-stream. First `state` (the task now), then every "
                               "event after it: `state` (status, node, attempts), `progress` "
                               "(value, max, fraction, node), `outputs`, and `end` (final "
                               "status, error), after which the stream ends. Each has an `id`; "
                               "reconnect with Last-Event-ID to get every later event once. "
                               "Idle streams get a comment every SSE_KEEPALIVE_S.",
                "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER)},
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            (*guarded, 404), _AUTH, ("task_id", "Last-Event-ID"))},
        "/api/v1/tasks/{task_id}/outputs/{index}": {"get": _operation(
            "getOutput", "An output file of a succeeded task", {"200": {
                "description": "The file (streamed), with the content type its record names.",
                "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER)},
                "content": {media: {"schema": {}} for media in (
                    "image/*", "video/*", "audio/*", "model/*", "application/octet-stream")}},
                "302": {"description": "With PRESIGN_TTL_S set (S3 store): a short-lived URL "
                                       "to fetch the file from the bucket.",
                        "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER),
                                    "Location": {"required": True,
                                                 "schema": {"type": "string"}}}}},
            (*guarded, 404), _AUTH, ("task_id", "index"))},
        "/api/v1/uploads": {"post": _operation(
            "upload", "Upload an input image (PNG, JPEG or WebP, by its content)",
            {"201": _json("Upload", "Stored; refer to it as `ref` in params or workflow_json.")},
            (*guarded, 400, 413, 415, 422), _AUTH,
            requestBody={"required": True, "content": {
                **{media: {"schema": {"type": "string", "format": "binary"}}
                   for media in (*UPLOAD_TYPES, "application/octet-stream")},
                "multipart/form-data": {"schema": _obj(
                    {"image": {"type": "string", "format": "binary"}}, required=["image"])}}})},
        "/api/v1/workflows": {"get": _operation(
            "listWorkflows", "Templates and their typed parameters",
            {"200": _json("Workflows", "The templates.")}, guarded, _AUTH)},
        "/api/v1/webhook-secret": {"get": _operation(
            "webhookSecret", "The secret that signs your webhooks (per API key)",
            {"200": _json("WebhookSecret", "Verify deliveries with it (e.g. the "
                          "standardwebhooks library's Webhook(secret).verify).")},
            guarded, _AUTH)},
        "/api/v1/nodes": {"get": _operation(
            "listNodes", "Nodes as the workers see them", {"200": _json("Nodes", "The nodes.")},
            guarded, _AUTH)},
        "/api/v1/nodes/{node_id}/{action}": {"post": _operation(
            "setNodeAvailability", "Cordon, drain or uncordon a node (admin key only)",
            {"202": _json("NodeAvailability",
                          "Recorded in Consul; the node's sidecar applies it within a probe "
                          "interval. cordon: no new tasks, what it holds finishes. drain: no new "
                          "tasks, the running prompt finishes, waiting ones go back in line. "
                          "`availability` is the state the workers saw last.")},
            (*guarded, 403, 404, 409), _AUTH, ("node_id", "action"))},
        "/healthz": {"get": _operation("healthz", "Liveness", {"200": _json("Health", "Alive.")},
                                       (), _PUBLIC)},
        "/readyz": {"get": _operation(
            "readyz", "Readiness: Redis, nodes, waiting tasks", {"200": _json("Ready", "Ready.")},
            (503,), _PUBLIC)},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics", {"200": {
            "description": "Prometheus text format.",
            "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER)},
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, (), _PUBLIC)},
        "/openapi.json": {"get": _operation("openapi", "This document", {"200": {
            "description": "OpenAPI 3.1.",
            "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER)},
            "content": {"application/json": {"schema": {"type": "object"}}}}}, (), _PUBLIC)},
        "/": {"get": _operation("console", "The web console (a static page; it asks for the "
                                "API key itself)", {"200": {
            "description": "HTML; its scripts and styles are served under /console/.",
            "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER)},
            "content": {"text/html": {"schema": {"type": "string"}}}}}, (), _PUBLIC)},
    }


def _parameters() -> dict[str, dict[str, Any]]:
    return {
        "task_id": {"name": "task_id", "in": "path", "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                    "description": "From the generate answer."},
        "batch_id": {"name": "batch_id", "in": "path", "required": True,
                     "schema": {"type": "string"},
                     "description": "From the batch answer; kept TASK_TTL after creation."},
        "index": {"name": "index", "in": "path", "required": True,
                  "schema": {"type": "integer", "minimum": 0},
                  "description": "The output's index in the task's `outputs`."},
        "node_id": {"name": "node_id", "in": "path", "required": True,
                    "schema": {"type": "string", "pattern": availability.NODE_ID.pattern},
                    "description": "A node's `name` in GET /api/v1/nodes."},
        "action": {"name": "action", "in": "path", "required": True,
                   "schema": {"enum": list(availability.ACTIONS)}},
        "Last-Event-ID": {
            "name": "Last-Event-ID", "in": "header", "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            "description": "The id of the last event received: the stream resumes after it."},
        c.IDEMPOTENCY_HEADER: {
            "name": c.IDEMPOTENCY_HEADER, "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": "Replays the first answer for the same body (per API key); another "
                           "body with the same key is a 409 idempotency_conflict."},
        REQUEST_ID_HEADER: {
            "name": REQUEST_ID_HEADER, "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": f"Echoed back and logged when it matches {REQUEST_ID_PATTERN}; "
                           "otherwise a new id is made."},
    }


def build_document(templates: Mapping[str, Template], max_body_bytes: int,
                   max_batch: int = Settings.max_batch) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document for these templates and these limits."""
    codes = error_codes()
    notes = {413: f" (bodies over {max_body_bytes} bytes)",
             429: " (retry after Retry-After seconds)"}
    retry_after = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"},
                                   "required": True, "description": "Seconds to wait."}}
    responses = {_error_response(status): {
        "description": f"{HTTPStatus(status).phrase}: " + ", ".join(codes[status])
                       + notes.get(status, ""),
        "headers": {REQUEST_ID_HEADER: _ref("headers", REQUEST_ID_HEADER),
                    **(retry_after if status == 429 else {})},
        "content": {"application/json": {"schema": _error_schema(codes[status],
                                                                 "Depends on the code")}}}
        for status in codes}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "comfy-service", "version": "1",
                 "description": "ComfyUI workflows as a stable, distributed service: REST API v1."},
        "paths": _paths(),
        "components": {
            "schemas": {**generate_schemas(templates), **batch_schemas(max_batch),
                        **answer_schemas()},
            "responses": responses,
            "parameters": _parameters(),
            "headers": {REQUEST_ID_HEADER: {"schema": {"type": "string"}, "required": True,
                                            "description": "The request's id, as logged."}},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key; required only when the service runs with API_KEYS."}},
        },
    }


def endpoint(templates: Mapping[str, Template], max_body_bytes: int,
             max_batch: int = Settings.max_batch) -> Callable[[Request], Awaitable[Response]]:
    """The GET /openapi.json handler: the document, built once."""
    body = json.dumps(build_document(templates, max_body_bytes, max_batch)).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")
    return openapi_json
