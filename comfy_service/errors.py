"""The one error hierarchy: every API-facing error has an HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class CodedError(Exception):
    """A message, details, and a stable `code` that is part of the API: never rename one."""

    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ServiceError(CodedError):
    """An error a client gets as an HTTP answer."""

    status = 500

    def as_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidJson(ServiceError):
    status, code = 400, "invalid_json"


class InvalidMultipart(ServiceError):
    status, code = 400, "invalid_multipart"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class AdminRequired(ServiceError):
    status, code = 403, "admin_required"


class WorkflowNotFound(ServiceError):
    status, code = 404, "workflow_not_found"


class TaskNotFound(ServiceError):
    status, code = 404, "task_not_found"


class OutputNotFound(ServiceError):
    status, code = 404, "output_not_found"


class BatchNotFound(ServiceError):
    status, code = 404, "batch_not_found"


class NodeNotFound(ServiceError):
    status, code = 404, "node_not_found"


class RouteNotFound(ServiceError):
    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class TaskFinished(ServiceError):
    status, code = 409, "task_finished"


class NodeAdminUnavailable(ServiceError):
    """Cordon and drain act through Consul: a service with a static node list has no such state."""
    status, code = 409, "node_admin_unavailable"


class IdempotencyConflict(ServiceError):
    status, code = 409, "idempotency_conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class BatchTooLarge(ServiceError):
    """More tasks in one batch than MAX_BATCH: split it."""
    status, code = 413, "batch_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ServiceError):
    status, code = 422, "validation_error"


class TooManyRequests(ServiceError):
    """429: the caller must wait `retry_after_s` (sent as Retry-After) before trying again."""

    status = 429

    def __init__(self, message: str, retry_after_s: float, details: Any = None) -> None:
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class RateLimited(TooManyRequests):
    code = "rate_limited"


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"


class TooManyStreams(TooManyRequests):
    code = "too_many_streams"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


# --- failures of a task (stored in the task record's `error`, never raised to a client) -------

class TaskFailure(CodedError):
    """Why a task ended without outputs (stored in the record's `error`)."""

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class NodeLost(TaskFailure):
    """The node went away (refused, dropped, errored, restarted): retried elsewhere."""

    code = "node_lost"


class ExecutionError(TaskFailure):
    """ComfyUI ran the prompt and a node raised: not retried."""

    code = "execution_error"


class InvalidWorkflow(TaskFailure):
    """The node rejected the graph at POST /prompt: not retried."""

    code = "invalid_workflow"


class TaskTimeout(TaskFailure):
    code = "timeout"


class OutputTooLarge(TaskFailure):
    """An output file on the node is bigger than MAX_OUTPUT_BYTES: not retried (it would be again)."""

    code = "output_too_large"


class OutputStoreFailed(TaskFailure):
    """The object store refused or could not take an output (after its own retries)."""

    code = "store_error"


class InputMissing(TaskFailure):
    """An uploaded input the task names is gone (expired before the task ran): not retried."""

    code = "input_missing"


class InputRejected(TaskFailure):
    """The node refused an input file at POST /upload/image: not retried."""

    code = "input_rejected"
