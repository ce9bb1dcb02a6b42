"""comfy_service.client in-process: the pure parts table-driven, single calls on MockTransport."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import ServerSentEvent

from comfy_service.client import (
    ApiError,
    BadRequest,
    ChecksumMismatch,
    Client,
    ClientConfig,
    Conflict,
    NetworkError,
    NotFound,
    Progress,
    RetryPolicy,
    TaskNotFound,
    TooManyRequests,
    Unavailable,
    ValidationError,
    WaitOptions,
    WaitTimeout,
)
from comfy_service.client.cli import parse_param, render
from comfy_service.client.errors import error_from_response
from comfy_service.client.models import GenerateRequest
from comfy_service.client.waiting import Tracker

NO_WAIT = RetryPolicy(attempts=3, max_wait_s=1, backoff_s=0)


def _error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={
        "error": {"code": code, "message": "m", "details": {"fields": []}}})


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "invalid_json", BadRequest),
    (404, "task_not_found", TaskNotFound),
    (404, "workflow_not_found", NotFound),
    (409, "task_finished", Conflict),
    (422, "validation_error", ValidationError),
    (429, "rate_limited", TooManyRequests),
    (503, "unavailable", Unavailable),
    (418, "teapot", ApiError),
])
def test_error_answers_become_exceptions_by_code_then_status(status: int, code: str,
                                                              kind: type[ApiError]) -> None:
    error = error_from_response(_error(status, code, **{"Retry-After": "3"}))
    assert type(error) is kind and (error.status, error.code) == (status, code)
    assert error.retry_after_s == 3 and error.details == {"fields": []}


def test_an_answer_without_our_error_body_still_has_a_code() -> None:
    error = error_from_response(httpx.Response(502, text="bad gateway"))
    assert (error.code, error.message) == ("http_502", "bad gateway")


@pytest.mark.parametrize(("attempt", "waited", "retry_after", "expected"), [
    (0, 0, None, 0.5),     # backoff without Retry-After
    (2, 0, None, 2.0),     # doubling
    (0, 0, 3, 3),          # Retry-After wins
    (4, 0, 1, None),       # out of attempts (5 sends in all)
    (1, 59, 3, None),      # out of time
])
def test_retry_policy(attempt: int, waited: float, retry_after: float | None,
                      expected: float | None) -> None:
    assert RetryPolicy().delay(attempt, waited, retry_after) == expected


def _client(handler: Callable[[httpx.Request], httpx.Response],
            retry: RetryPolicy = NO_WAIT) -> Client:
    return Client("http://service", "secret", retry=retry,
                  transport=httpx.MockTransport(handler))


def _task(status: str = "succeeded", **more: object) -> dict[str, object]:
    return {"task_id": "t1", "status": status, "outputs": [], **more}


def test_503_and_429_are_retried_other_4xx_never() -> None:
    answers = [_error(503, "unavailable", **{"Retry-After": "0"}),
               _error(429, "rate_limited", **{"Retry-After": "0"}), httpx.Response(200, json=_task())]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.pop(0) if "t1" in request.url.path else _error(422, "validation_error")
    with _client(handler) as client:
        assert client.get("t1").status == "succeeded" and len(sent) == 3
        assert sent[0].headers["authorization"] == "Bearer secret"
        with pytest.raises(ValidationError):
            client.generate("txt2img", {"steps": -1})
    assert len(sent) == 4


def test_a_broken_connection_is_retried_only_when_the_request_can_be_repeated() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) % 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(202, json={"task_id": "t1", "status": "queued",
                                         "batch_id": "b1", "task_ids": ["t1"]})
    with _client(handler) as client:
        assert client.generate("txt2img", {}).task_id == "t1"  # it carries an Idempotency-Key
        with pytest.raises(NetworkError):
            client.create_batch([GenerateRequest()])
    assert calls == ["/api/v1/generate", "/api/v1/generate", "/api/v1/batches"]


def test_a_download_whose_sha256_differs_is_removed(tmp_path: pathlib.Path) -> None:
    output = {"index": 0, "filename": "../a.png", "sha256": hashlib.sha256(b"good").hexdigest()}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/outputs/0"):
            return httpx.Response(200, content=b"good" if "ok" in request.url.path else b"bad")
        return httpx.Response(200, json=_task(task_id=request.url.path.rsplit("/", 1)[-1],
                                              outputs=[output]))
    with _client(handler) as client:
        saved = client.download("ok", tmp_path)
        assert saved == [tmp_path / "a.png"] and saved[0].read_bytes() == b"good"
        with pytest.raises(ChecksumMismatch):
            client.download("t1", tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_wait_polls_when_there_is_no_event_route_and_gives_up_at_its_timeout() -> None:
    polled: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return _error(404, "not_found")
        polled.append(request.url.path)
        return httpx.Response(200, json=_task("running", progress={"value": 1, "max": 4,
                                                                    "fraction": 0.25}))
    seen: list[Progress] = []
    with _client(handler) as client, pytest.raises(WaitTimeout):
        client.wait("t1", on_progress=seen.append,
                    options=WaitOptions(timeout_s=0.2, poll_interval_s=0.05))
    assert len(polled) >= 2 and seen == [Progress("t1", "running", 0.25, 1, 4)]


def test_wait_says_when_the_task_is_not_there() -> None:
    with _client(lambda request: _error(404, "task_not_found")) as client, \
            pytest.raises(TaskNotFound):
        client.wait("t1")


def _event(name: str, **data: object) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=json.dumps(data), id="1-0")


def test_the_tracker_reports_each_change_once() -> None:
    seen: list[Progress] = []
    tracker = Tracker("t1", seen.append)
    for event in [_event("state", status="queued"), _event("state", status="running", node="n1"),
                  _event("progress", value=1, max=2, fraction=0.5, node="n1"),
                  _event("progress", value=1, max=2, fraction=0.5, node="n1"),
                  _event("outputs", outputs=[]), _event("end", status="succeeded", node="n1")]:
        tracker.event(event)
    assert [(p.status, p.fraction) for p in seen] == [
        ("queued", None), ("running", None), ("running", 0.5), ("succeeded", 1.0)]
    assert tracker.done


@pytest.mark.parametrize(("text", "expected"), [
    ("steps=30", ("steps", 30)), ("prompt=a b", ("prompt", "a b")), ("denoise=0.5", ("denoise", 0.5)),
    ("flag=true", ("flag", True)), ("empty=", ("empty", "")),
])
def test_cli_params(text: str, expected: tuple[str, object]) -> None:
    assert parse_param(text) == expected


def test_the_progress_line() -> None:
    line = render(Progress("0123456789", "running", 0.5, 10, 20, "node-1"))
    assert line == "01234567 [############------------]  50% running on node-1"


def test_the_config_comes_from_the_environment_and_never_shows_the_key() -> None:
    config = ClientConfig.from_env({"COMFY_SERVICE_URL": "http://h:1",
                                    "COMFY_SERVICE_API_KEY": "secret"})
    assert (config.base_url, config.api_key) == ("http://h:1", "secret")
    assert "secret" not in repr(config)
    assert ClientConfig.from_env({}, api_key="k").base_url == "http://127.0.0.1:8080"


def test_the_client_imports_nothing_of_the_service() -> None:
    code = ("import sys, comfy_service.client, comfy_service.client.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    for package in ("gateway", "actors", "comfyui_sim", "node_sidecar", "redis", "starlette",
                    "dramatiq"):
        assert f"'{package}'" not in loaded
    assert "'httpx_sse'" in loaded
