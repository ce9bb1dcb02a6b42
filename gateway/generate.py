"""POST /api/v1/generate: from a request body to a task record, or a field-by-field 422 (pure)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from actors.store import PRIORITY_LIMIT
from actors.tasks import QUEUED, TaskRecord, utc_now
from comfy_service.comfyui.object_info import NodeClass
from comfy_service.comfyui.validation import PromptCrash, validate_prompt
from comfy_service.errors import Unavailable, ValidationFailed, WorkflowNotFound
from comfy_service.inputs import InputRef, looks_like_ref
from comfy_service.templates import FieldError, Template, looks_like_ui_format, render, resolve
from comfy_service.webhook_policy import WebhookSpec, initial_status, parse_webhook
from gateway.limits import check_graph_shape

DEFAULT_WORKFLOW = "txt2img"
ALLOWED_KEYS = {"workflow", "params", "workflow_json", "priority", "timeout_s", "webhook"}
MAX_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class GenerateRequest:
    workflow: str | None
    params: dict[str, Any] | None
    graph: dict[str, Any]
    priority: int
    timeout_s: float | None
    webhook: WebhookSpec | None = None


def _fail(errors: list[FieldError]) -> ValidationFailed:
    return ValidationFailed("the request is not valid", {"fields": [e.as_dict() for e in errors]})


def _non_finite(body: Mapping[str, Any]) -> list[FieldError]:
    """NaN and +-Infinity anywhere in the body: Python's json reads them, but they are not JSON,
    pass every bound check (NaN compares false), and no JSON encoder writes them back (a task
    holding one answered GET with a 500 and failed on its node)."""
    errors = []
    stack: list[tuple[Any, str]] = [(value, key) for key, value in body.items()]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            errors.append(FieldError(where, "must be a finite number (NaN and Infinity are not JSON)"))
        elif isinstance(item, dict):
            stack.extend((value, f"{where}.{key}") for key, value in item.items())
        elif isinstance(item, list):
            stack.extend((value, f"{where}[{index}]") for index, value in enumerate(item))
    return sorted(errors, key=lambda error: error.field)


def _options(body: Mapping[str, Any]) -> tuple[int, float | None, list[FieldError]]:
    errors = []
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) \
            or abs(priority) > PRIORITY_LIMIT:
        errors.append(FieldError("priority", f"must be an integer from -{PRIORITY_LIMIT} to "
                                             f"{PRIORITY_LIMIT}"))
        priority = 0
    timeout = body.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= MAX_TIMEOUT_S):
        errors.append(FieldError("timeout_s", f"must be a number of seconds in (0, {MAX_TIMEOUT_S}]"))
        timeout = None
    return priority, (float(timeout) if timeout is not None else None), errors


def parse_generate(body: Any, templates: Mapping[str, Template],
                   classes: Mapping[str, NodeClass],
                   draw_seed: Callable[[int], int], task_id: str,
                   webhooks: bool = False) -> GenerateRequest:
    """Check a generate body; raises ValidationFailed (422) or WorkflowNotFound (404).
    `webhook` is a field only where the caller vets and notes it (`webhooks`)."""
    if not isinstance(body, dict):
        raise _fail([FieldError("body", "must be a JSON object")])
    allowed = ALLOWED_KEYS if webhooks else ALLOWED_KEYS - {"webhook"}
    errors = [FieldError(key, "unknown field") for key in sorted(set(body) - allowed)]
    if not_finite := _non_finite(body):
        raise _fail(errors + not_finite)
    priority, timeout_s, option_errors = _options(body)
    errors += option_errors
    webhook = None
    if webhooks and "webhook" in body:
        webhook, webhook_errors = parse_webhook(body["webhook"])
        errors += webhook_errors
    if "workflow_json" in body:
        if "workflow" in body or "params" in body:
            errors.append(FieldError("workflow_json", "give either workflow (with params) or "
                                                      "workflow_json, not both"))
        if errors:
            raise _fail(errors)
        if not classes:
            raise Unavailable("no healthy ComfyUI node has reported its node classes yet, so "
                              "workflow_json cannot be validated; retry shortly")
        graph = check_custom_graph(body["workflow_json"], classes)
        return GenerateRequest(None, None, graph, priority, timeout_s, webhook)

    name = body.get("workflow", DEFAULT_WORKFLOW)
    if not isinstance(name, str):
        errors.append(FieldError("workflow", "must be a template name"))
        raise _fail(errors)
    template = templates.get(name)
    if template is None:
        raise WorkflowNotFound(f"no workflow template named {name!r}",
                               {"available": sorted(templates)})
    values, param_errors = resolve(template, body.get("params", {}), draw_seed)
    errors += param_errors
    if errors:
        raise _fail(errors)
    graph = render(template, values, output_prefix=f"cs/{task_id}")
    if classes:  # once nodes have reported: refuse what no node could run (a checkpoint none has)
        result = validate_prompt(graph, classes, file_exists=looks_like_ref)
        if not result.ok or result.node_errors:
            raise ValidationFailed("no ComfyUI node can run this workflow with these params",
                                   {"error": result.error, "node_errors": result.node_errors})
    return GenerateRequest(name, values, graph, priority, timeout_s, webhook)


def check_custom_graph(graph: Any, classes: Mapping[str, NodeClass]) -> dict[str, Any]:
    """Validate an API-format graph against the node classes the cluster's nodes reported."""
    if looks_like_ui_format(graph):
        raise ValidationFailed(
            "workflow_json is a UI-format workflow (nodes/links); export it with "
            "'Export (API)' in ComfyUI and send that instead",
            {"fields": [{"field": "workflow_json", "message": "UI format is not accepted"}]})
    if not isinstance(graph, dict) or not graph:
        raise _fail([FieldError("workflow_json", "must be a non-empty API-format graph object")])
    check_graph_shape(graph)
    try:
        # An input file is an upload reference (checked against the uploads by the caller);
        # a bare file name would name a file on some node, which the service cannot promise.
        result = validate_prompt(graph, classes, file_exists=looks_like_ref)
    except PromptCrash as exc:
        raise _fail([FieldError("workflow_json", f"is not a valid API-format graph ({exc})")]) \
            from exc
    if not result.ok or result.node_errors:
        raise ValidationFailed("workflow_json failed ComfyUI validation",
                               {"error": result.error, "node_errors": result.node_errors})
    return graph


def ref_field(body: Mapping[str, Any], ref: InputRef) -> str:
    """The request field that holds an input reference, for a 422 that names it."""
    if "workflow_json" in body:
        return f"workflow_json.{ref.node_id}.inputs.{ref.input_name}"
    params = body.get("params")
    for name, given in (params.items() if isinstance(params, dict) else ()):
        if given == f"upload:{ref.upload_id}":
            return f"params.{name}"
    return "params"


def new_record(request: GenerateRequest, task_id: str, request_id: str | None,
               sequence: int, owner: str | None = None,
               webhook_secret: str | None = None) -> TaskRecord:
    """The task to store; with a webhook, `webhook_secret` signs its deliveries."""
    webhook = initial_status(request.webhook) if request.webhook is not None else None
    return TaskRecord(task_id=task_id, status=QUEUED, graph=request.graph, created_at=utc_now(),
                      workflow=request.workflow, params=request.params,
                      priority=request.priority, timeout_s=request.timeout_s,
                      request_id=request_id, sequence=sequence, owner=owner,
                      webhook=webhook, webhook_secret=webhook_secret if webhook else None)


def new_task_id() -> str:
    return str(uuid.uuid4())
