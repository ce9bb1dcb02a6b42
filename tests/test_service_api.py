"""REST API v1 against the real gateway and worker processes, Redis and a simulated node."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from comfy_service.devstack import http_ok
from tests.conftest import SHARED
from tests.support.processes import ManagedProcess, RedisProcess, free_port, wait_until
from tests.support.service import Stack, txt2img_body


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = Stack(tmp_path_factory.mktemp("api"), nodes=1, step_ms=10)
    yield service
    service.stop()


def error_of(answer: httpx.Response) -> dict[str, Any]:
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


def test_generate_runs_txt2img_and_serves_its_png(stack: Stack) -> None:
    # Given a txt2img request
    answer = stack.http.post("/api/v1/generate", json=txt2img_body(steps=4, width=320,
                                                                   height=256, seed=5))
    # Then it is accepted with a Location
    assert answer.status_code == 202
    body = answer.json()
    assert set(body) == {"task_id", "status", "created_at"} and body["status"] == "queued"
    assert answer.headers["location"] == f"/api/v1/tasks/{body['task_id']}"
    # When it finishes
    task = stack.wait_task(body["task_id"])
    # Then the record is complete and the output is the PNG that was produced
    assert task["status"] == "succeeded", task
    assert set(task) == {"task_id", "status", "workflow", "params", "node", "progress",
                         "attempts", "created_at", "started_at", "finished_at", "outputs",
                         "error"}
    assert task["attempts"] == 1 and task["node"] and task["error"] is None
    assert task["progress"]["fraction"] == 1.0
    assert task["created_at"] <= task["started_at"] <= task["finished_at"]
    assert task["params"]["seed"] == 5
    (output,) = task["outputs"]
    assert set(output) == {"index", "filename", "node_id", "kind", "url", "content_type",
                           "bytes", "sha256"}
    image = stack.http.get(f"/api/v1/tasks/{body['task_id']}/outputs/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert hashlib.sha256(image.content).hexdigest() == output["sha256"]
    assert len(image.content) == output["bytes"]
    assert Image.open(io.BytesIO(image.content)).size == (320, 256)


def test_a_missing_seed_is_chosen_and_recorded(stack: Stack) -> None:
    task = stack.wait_task(stack.submit(txt2img_body(steps=1)))
    assert isinstance(task["params"]["seed"], int)


def test_storydiffusion_gives_one_output_per_scene(stack: Stack) -> None:
    task_id = stack.submit({"workflow": "storydiffusion", "params": {
        "characters": [{"name": "Ann", "description": "a woman in a red coat"}],
        "scenes": [{"character": "Ann", "text": "walks"}, {"character": "Ann", "text": "sits"}],
        "width": 256, "height": 256, "steps": 2}})
    task = stack.wait_task(task_id)
    assert task["status"] == "succeeded", task
    assert [o["index"] for o in task["outputs"]] == [0, 1]


def test_a_valid_api_format_graph_runs(stack: Stack) -> None:
    graph = json.loads((SHARED / "storydiffusion" / "txt2img_api.json").read_text())
    graph["352"]["inputs"]["steps"] = 1
    task = stack.wait_task(stack.submit({"workflow_json": graph}))
    assert task["status"] == "succeeded" and task["workflow"] is None


def test_workflows_lists_templates_with_typed_params(stack: Stack) -> None:
    workflows = {w["name"]: w for w in stack.http.get("/api/v1/workflows").json()["workflows"]}
    assert {"txt2img", "storydiffusion"} <= set(workflows)
    width = workflows["txt2img"]["params"]["width"]
    assert (width["type"], width["min"], width["max"], width["default"]) == ("integer", 256,
                                                                             2048, 1024)
    assert workflows["txt2img"]["params"]["prompt"]["required"] is True


def test_nodes_readyz_healthz_and_metrics(stack: Stack) -> None:
    (node,) = stack.http.get("/api/v1/nodes").json()["nodes"]
    assert node["healthy"] is True and node["slots"] == 2
    ready = stack.http.get("/readyz").json()
    assert ready["nodes_healthy"] == 1 and ready["redis"] == "ok"
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    assert "comfy_service_http_requests_total" in stack.http.get("/metrics").text


def test_request_id_is_echoed_or_generated(stack: Stack) -> None:
    given = stack.http.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert given.headers["x-request-id"] == "req-123"
    assert len(stack.http.get("/healthz").headers["x-request-id"]) == 32


@pytest.mark.parametrize("kwargs,status,code", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ({"content": b"prompt=cat", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ({"json": {"workflow": "nope"}}, 404, "workflow_not_found"),
    ({"json": {"params": {"prompt": "x", "colour": "red"}}}, 422, "validation_error"),
    ({"json": {"params": {"prompt": "x", "width": 1001}}}, 422, "validation_error"),
    ({"json": {"params": {"prompt": "x"}, "priority": "high"}}, 422, "validation_error"),
    ({"json": {"params": {"prompt": "x"}, "timeout_s": -1}}, 422, "validation_error"),
    ({"json": [1, 2]}, 422, "validation_error"),
    ({"json": {"workflow_json": {"last_node_id": 3, "nodes": [], "links": []}}}, 422,
     "validation_error"),
    ({"json": {"workflow_json": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}}, 422,
     "validation_error"),
    ({"json": {"workflow": "txt2img", "workflow_json": {}}}, 422, "validation_error"),
])
def test_bad_input_gets_a_4xx_with_a_stable_code(stack: Stack, kwargs: dict[str, Any],
                                                 status: int, code: str) -> None:
    answer = stack.http.post("/api/v1/generate", **kwargs)
    assert answer.status_code == status, answer.text
    assert error_of(answer)["code"] == code


def test_validation_errors_name_each_bad_field(stack: Stack) -> None:
    answer = stack.http.post("/api/v1/generate", json={"params": {"width": 1001, "bogus": 1}})
    fields = {f["field"] for f in error_of(answer)["details"]["fields"]}
    assert fields == {"params.width", "params.bogus", "params.prompt"}


def test_custom_graph_errors_carry_comfyui_node_errors(stack: Stack) -> None:
    graph = json.loads((SHARED / "storydiffusion" / "txt2img_api.json").read_text())
    graph["352"]["inputs"]["steps"] = 0
    details = error_of(stack.http.post("/api/v1/generate", json={"workflow_json": graph}))[
        "details"]
    assert details["node_errors"]["352"]["errors"][0]["type"] == "value_smaller_than_min"


def test_oversized_body_is_413(stack: Stack) -> None:
    answer = stack.http.post("/api/v1/generate", json={"params": {"prompt": "x" * 1_100_000}})
    assert answer.status_code == 413 and error_of(answer)["code"] == "payload_too_large"


def test_unknown_task_and_route(stack: Stack) -> None:
    assert error_of(stack.http.get("/api/v1/tasks/nope"))["code"] == "task_not_found"
    assert stack.http.delete("/api/v1/tasks/nope").status_code == 404
    assert stack.http.get("/api/v1/nope").status_code == 404


def test_idempotency_key_replays_and_conflicts(stack: Stack) -> None:
    body = txt2img_body(steps=1, seed=77)
    first = stack.http.post("/api/v1/generate", json=body, headers={"Idempotency-Key": "k-1"})
    again = stack.http.post("/api/v1/generate", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    other = stack.http.post("/api/v1/generate", json=txt2img_body(steps=2),
                            headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_conflict"


def test_cancel_of_a_finished_task_is_409(stack: Stack) -> None:
    task_id = stack.submit(txt2img_body(steps=1))
    assert stack.wait_task(task_id)["status"] == "succeeded"
    answer = stack.http.delete(f"/api/v1/tasks/{task_id}")
    assert answer.status_code == 409 and error_of(answer)["code"] == "task_finished"


def test_api_keys_are_required_when_configured(tmp_path: pathlib.Path) -> None:
    # The gateway alone answers 401s: no worker or node is needed.
    redis = RedisProcess(tmp_path / "redis")
    port = free_port()
    gateway = ManagedProcess("gateway", [sys.executable, "-m", "comfy_service.cli", "gateway"],
                             tmp_path / "gw.log", env={"REDIS_URL": redis.url,
                                                       "API_PORT": str(port),
                                                       "API_KEYS": "alpha,beta"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/healthz"), 20, "the gateway")
        assert error_of(httpx.get(f"{url}/api/v1/workflows"))["code"] == "unauthorized"
        assert httpx.get(f"{url}/api/v1/workflows",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/api/v1/workflows",
                         headers={"Authorization": "Bearer beta"}).status_code == 200
        assert "alpha" not in gateway.log_tail(200) and "beta" not in gateway.log_tail(200)
    finally:
        gateway.stop()
        redis.stop()


def test_redis_down_is_503(tmp_path: pathlib.Path) -> None:
    port = free_port()
    gateway = ManagedProcess("gateway", [sys.executable, "-m", "comfy_service.cli", "gateway"],
                             tmp_path / "gw.log", env={
                                 "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                                 "API_PORT": str(port)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/healthz"), 20, "the gateway")
        answer = httpx.post(f"{url}/api/v1/generate", json=txt2img_body())
        assert answer.status_code == 503 and error_of(answer)["code"] == "unavailable"
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        gateway.stop()


def test_logs_are_json_lines_without_prompts(stack: Stack) -> None:
    task_id = stack.submit(txt2img_body(steps=1, prompt="a secret purple giraffe"),
                           **{"X-Request-ID": "trace-42"})
    stack.wait_task(task_id)
    assert stack.gateway is not None
    lines = [json.loads(line) for proc in (stack.gateway, stack.workers[0])
             for line in proc.log_path.read_text().splitlines() if line.startswith("{")]
    assert all({"ts", "level", "event"} <= set(line) for line in lines)
    accepted = [line for line in lines if line["event"] == "task.accepted"
                and line.get("task_id") == task_id]
    assert accepted and accepted[0]["request_id"] == "trace-42"
    assert any(line["event"] == "task.succeeded" and line.get("task_id") == task_id
               and line.get("node") for line in lines)
    everything = stack.gateway.log_path.read_text() + stack.workers[0].log_path.read_text()
    assert "purple giraffe" not in everything
