"""Hostile and careless input against the real gateway: always a 4xx with a stable code, never a
500 or a traceback in the log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.limits import MAX_GRAPH_DEPTH, MAX_JSON_DEPTH
from tests.support.processes import wait_until
from tests.support.service import Stack, txt2img_body


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = Stack(tmp_path_factory.mktemp("hostile"), nodes=1, step_ms=5)
    yield service
    service.stop()


def _error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    return error


def _blur_chain(length: int) -> dict[str, Any]:
    """EmptyImage -> ImageBlur x (length - 2) -> SaveImage: a valid graph `length` nodes long."""
    graph: dict[str, Any] = {"0": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for i in range(1, length - 1):
        graph[str(i)] = {"class_type": "ImageBlur", "inputs": {
            "image": [str(i - 1), 0], "blur_radius": 1, "sigma": 1.0}}
    graph["save"] = {"class_type": "SaveImage", "inputs": {
        "images": [str(length - 2), 0], "filename_prefix": "chain"}}
    return graph


def _no_tracebacks(stack: Stack) -> None:
    assert stack.gateway is not None
    log = stack.gateway.log_path.read_text()
    assert "Traceback" not in log and "http.unhandled" not in log


def test_a_cycle_is_refused_naming_its_nodes(stack: Stack) -> None:
    graph = _blur_chain(5)
    graph["1"]["inputs"]["image"] = ["3", 0]  # 1 -> 3 -> 2 -> 1
    answer = stack.http.post("/api/v1/generate", json={"workflow_json": graph})
    error = _error(answer, 422, "validation_error")
    assert sorted(error["details"]["cycle"]) == ["1", "2", "3"]
    _no_tracebacks(stack)


def test_a_long_chain_is_refused_by_the_documented_limit(stack: Stack) -> None:
    for length in (5000, MAX_GRAPH_DEPTH + 1):
        answer = stack.http.post("/api/v1/generate", json={"workflow_json": _blur_chain(length)})
        _error(answer, 422, "validation_error")
    _no_tracebacks(stack)


def test_a_chain_within_the_limit_is_accepted_and_runs(stack: Stack) -> None:
    task_id = stack.submit({"workflow_json": _blur_chain(MAX_GRAPH_DEPTH)})
    record = stack.wait_task(task_id)
    assert record["status"] == "succeeded", record
    assert len(record["outputs"]) == 1


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_a_400(stack: Stack, depth: int) -> None:
    body = "[" * depth + "]" * depth
    answer = stack.http.post("/api/v1/generate", content=body,
                             headers={"content-type": "application/json"})
    error = _error(answer, 400, "invalid_json")
    assert error["details"] == {"max_depth": MAX_JSON_DEPTH}
    _no_tracebacks(stack)


def test_an_oversized_body_sent_without_expect_continue_reads_a_413(stack: Stack) -> None:
    # urllib sends the whole body before reading the answer, as many clients do
    body = json.dumps({"params": {"prompt": "x" * (6 * 1024 * 1024)}}).encode()
    request = urllib.request.Request(f"{stack.url}/api/v1/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    with caught.value as answer:
        assert answer.code == 413
        assert json.loads(answer.read())["error"]["code"] == "payload_too_large"


def test_an_oversized_chunked_body_reads_a_413(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"params": {"prompt": "'
        for _ in range(6 * 16):
            yield b"x" * 65536
        yield b'"}}'
    answer = stack.http.post("/api/v1/generate", content=chunks(),
                             headers={"content-type": "application/json"})
    _error(answer, 413, "payload_too_large")


def test_a_template_asking_for_a_checkpoint_no_node_has_is_refused(stack: Stack) -> None:
    # Found against a real ComfyUI: such a task was accepted and then waited forever, since
    # no node could take it. Once the nodes have reported what they hold, it is a 422.
    body = txt2img_body(checkpoint="nope.safetensors")
    answer = wait_until(lambda: (a := stack.http.post("/api/v1/generate", json=body))
                        .status_code == 422 and a, 30, "the nodes' checkpoints to be known",
                        interval=0.2)
    error = _error(answer, 422, "validation_error")
    assert "nope.safetensors" in json.dumps(error["details"])
    # while the checkpoint the node has is accepted
    assert stack.http.post("/api/v1/generate", json=txt2img_body()).status_code == 202
