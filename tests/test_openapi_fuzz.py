"""Schemathesis fuzzes the running gateway against the /openapi.json it serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from comfy_service.settings import Settings
from comfy_service.templates import load_templates
from gateway.openapi import build_document
from tests.support.service import Stack, slow_body, txt2img_body

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
EXAMPLES = 25  # per operation and phase: the whole run stays within a few minutes on 2 cores


# The document the gateway serves on default settings (the `stack` fixture checks that it does).
# Loaded eagerly: schemathesis 4.32's lazy `from_fixture` breaks on pytest 9.2 (node `_nodeid`).
DOCUMENT = build_document(load_templates(), Settings().max_body_bytes)
schema = schemathesis.openapi.from_dict(DOCUMENT)
# Deterministic, and no example database left in the work tree.
schema.config.generation.update(max_examples=EXAMPLES, deterministic=True, database="none")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = Stack(tmp_path_factory.mktemp("fuzz"), nodes=1, step_ms=1)
    try:
        served = service.http.get("/openapi.json")
        assert served.status_code == 200 and served.json() == DOCUMENT
        yield service
    finally:
        service.stop()


def documented_codes(document: dict[str, Any], status: int) -> list[str]:
    response = document["components"]["responses"][f"Error{status}"]
    enum: list[str] = (response["content"]["application/json"]["schema"]["properties"]["error"]
                       ["properties"]["code"]["enum"])
    return enum


@schema.parametrize()
def test_every_answer_is_documented(case: schemathesis.Case, stack: Stack) -> None:
    response = case.call(base_url=stack.url, timeout=10)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        code = response.json()["error"]["code"]
        assert code in documented_codes(DOCUMENT, response.status_code), \
            (case.method, case.formatted_path, response.status_code, response.text)


def call_and_check(stack: Stack, path: str, method: str, expected: set[int], **data: Any
                   ) -> schemathesis.Response:
    """One hand-made request, checked like the fuzzed ones."""
    case = schema[path][method].Case(**data)
    response = case.call(base_url=stack.url, timeout=10)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code in expected, response.text
    return response


def test_a_task_s_whole_life_answers_as_documented(stack: Stack) -> None:
    # Given a task submitted with an Idempotency-Key
    key = {"Idempotency-Key": "life-1"}
    accepted = call_and_check(stack, "/api/v1/generate", "POST", {202}, headers=key,
                              body=txt2img_body(steps=2), media_type="application/json")
    task_id = accepted.json()["task_id"]
    # When the key comes back with another body, Then that is a documented conflict
    call_and_check(stack, "/api/v1/generate", "POST", {409}, headers=key,
                   body=txt2img_body(steps=3), media_type="application/json")
    # When it has run, Then its record, its output and a late cancel answer as documented
    assert stack.wait_task(task_id)["status"] == "succeeded"
    task = {"task_id": task_id}
    call_and_check(stack, "/api/v1/tasks/{task_id}", "GET", {200}, path_parameters=task)
    image = call_and_check(stack, "/api/v1/tasks/{task_id}/outputs/{index}", "GET", {200},
                           path_parameters={**task, "index": 0})
    assert image.headers["content-type"] == ["image/png"]
    call_and_check(stack, "/api/v1/tasks/{task_id}/outputs/{index}", "GET", {404},
                   path_parameters={**task, "index": 1})
    call_and_check(stack, "/api/v1/tasks/{task_id}", "DELETE", {409}, path_parameters=task)


def test_cancelling_a_waiting_task_answers_as_documented(stack: Stack) -> None:
    # Given a task that cannot finish soon
    task_id = stack.submit(slow_body(steps=150))
    # When it is cancelled, Then the answer (200 at once, or 202 while interrupting) is documented
    answer = call_and_check(stack, "/api/v1/tasks/{task_id}", "DELETE", {200, 202},
                            path_parameters={"task_id": task_id})
    assert answer.json()["status"] == ("cancelled" if answer.status_code == 200 else "running")
    stack.wait_task(task_id)


def test_a_slash_in_a_task_id_answers_as_documented(stack: Stack) -> None:
    # "x/outputs/0" routes to the outputs path, which only answers GET
    call_and_check(stack, "/api/v1/tasks/{task_id}", "DELETE", {405},
                   path_parameters={"task_id": "x/outputs/0"})
    call_and_check(stack, "/api/v1/tasks/{task_id}", "GET", {404},
                   path_parameters={"task_id": "x/outputs/0"})


def test_nan_is_refused_and_never_stored(stack: Stack) -> None:
    # Given a body that Python's json reads but that is not JSON (the fuzz only sends JSON)
    raw = b'{"params": {"prompt": "x", "steps": 2, "width": 256, "height": 256, "cfg": NaN}}'
    answer = stack.http.post("/api/v1/generate", content=raw,
                             headers={"content-type": "application/json"})
    # Then it is a documented 422 naming the field (it was a 202, then a 500 on every GET)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] in documented_codes(DOCUMENT, 422)
    assert error["details"]["fields"][0]["field"] == "params.cfg"
