"""Python client for comfy-service API v1: `Client` (blocking) and `AsyncClient` (asyncio).

It depends on httpx and httpx-sse only (never on the gateway or the workers):

    from comfy_service.client import Client
    with Client("http://127.0.0.1:8080", api_key="...") as client:
        task = client.generate("txt2img", {"prompt": "a lighthouse at dawn", "steps": 30})
        task = client.wait(task.task_id, on_progress=print)
        client.download(task, "./images")
"""

from __future__ import annotations

from comfy_service.client.aio import AsyncClient
from comfy_service.client.config import DEFAULT_URL, ClientConfig
from comfy_service.client.errors import (
    ApiError,
    BadRequest,
    ChecksumMismatch,
    ComfyServiceError,
    Conflict,
    Forbidden,
    NetworkError,
    NotFound,
    PayloadTooLarge,
    TaskNotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    ValidationError,
    WaitTimeout,
)
from comfy_service.client.models import (
    Batch,
    BatchTask,
    GenerateRequest,
    Node,
    Output,
    Progress,
    Task,
    TaskError,
    Upload,
    Workflow,
)
from comfy_service.client.protocol import RetryPolicy
from comfy_service.client.sync import Client
from comfy_service.client.waiting import WaitOptions

__all__ = [
    "DEFAULT_URL", "ApiError", "AsyncClient", "BadRequest", "Batch", "BatchTask",
    "ChecksumMismatch", "Client", "ClientConfig", "ComfyServiceError", "Conflict", "Forbidden",
    "GenerateRequest", "NetworkError", "Node", "NotFound", "Output", "PayloadTooLarge",
    "Progress", "RetryPolicy", "Task", "TaskError", "TaskNotFound", "TooManyRequests",
    "Unauthorized", "Unavailable", "Upload", "ValidationError", "WaitOptions", "WaitTimeout",
    "Workflow",
]
