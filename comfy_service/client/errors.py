"""The client's one error hierarchy: an API answer's stable `code` becomes an exception class."""

from __future__ import annotations

import json
from typing import Any

import httpx


class ComfyServiceError(Exception):
    """Anything the client raises."""


class NetworkError(ComfyServiceError):
    """The service could not be reached, or the connection broke (after any retries)."""


class WaitTimeout(ComfyServiceError):
    """wait() gave up before the task ended; the task itself goes on."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id} did not end within {timeout_s:g}s")
        self.task_id = task_id


class ChecksumMismatch(ComfyServiceError):
    """A downloaded output's sha256 is not the one its task record names (the file is removed)."""


class ApiError(ComfyServiceError):
    """An error answer: `{"error": {"code", "message", "details"}}` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after_s: float | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s
        self.request_id = request_id


class BadRequest(ApiError):
    """400: invalid_json, invalid_multipart."""


class Unauthorized(ApiError):
    """401: no key, or not one of the service's."""


class Forbidden(ApiError):
    """403: admin_required."""


class NotFound(ApiError):
    """404: task_not_found, workflow_not_found, output_not_found, not_found."""


class TaskNotFound(NotFound):
    pass


class Conflict(ApiError):
    """409: task_finished, idempotency_conflict."""


class PayloadTooLarge(ApiError):
    pass


class ValidationError(ApiError):
    """422: `details` names each bad field (or carries ComfyUI's node_errors)."""


class TooManyRequests(ApiError):
    """429: rate_limited, quota_exceeded, too_many_streams; `retry_after_s` from Retry-After."""


class Unavailable(ApiError):
    """503: the service cannot take the request now."""


_BY_CODE: dict[str, type[ApiError]] = {"task_not_found": TaskNotFound}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: ValidationError, 429: TooManyRequests, 503: Unavailable}


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (delta-seconds only: the gateway never sends a date)."""
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, by its stable code, else its status."""
    try:
        body = json.loads(response.content)
        error = body["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):
        code = "unavailable" if response.status_code == 503 else f"http_{response.status_code}"
        message, details = response.text[:200] or response.reason_phrase, None
    kind = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, ApiError)
    return kind(response.status_code, code, message, details, retry_after(response.headers),
                response.headers.get("x-request-id"))
