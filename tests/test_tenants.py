"""Tenants: a task belongs to the API key that created it; other keys cannot see, cancel or
download it, and idempotency keys are scoped per API key (real gateway, worker, Redis, node)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import wait_until
from tests.support.service import Stack, txt2img_body

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = Stack(tmp_path_factory.mktemp("tenants"), nodes=1, step_ms=5,
                    env={"API_KEYS": f"{ALICE},{BOB}"})
    yield service
    service.stop()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _code(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["code"])


def test_another_key_cannot_read_cancel_or_download_a_task(stack: Stack) -> None:
    # Given a task Alice created and that finished
    created = stack.http.post("/api/v1/generate", json=txt2img_body(), headers=_as(ALICE))
    assert created.status_code == 202
    task_id = created.json()["task_id"]
    record = wait_until(lambda: (r := stack.http.get(f"/api/v1/tasks/{task_id}",
                                                     headers=_as(ALICE)).json())["status"]
                        in ("succeeded", "failed") and r, 60, "Alice's task to finish")
    assert record["status"] == "succeeded", record
    # When Bob asks for it, cancels it, or downloads its output
    read = stack.http.get(f"/api/v1/tasks/{task_id}", headers=_as(BOB))
    cancel = stack.http.delete(f"/api/v1/tasks/{task_id}", headers=_as(BOB))
    output = stack.http.get(f"/api/v1/tasks/{task_id}/outputs/0", headers=_as(BOB))
    # Then each answer is the 404 of a task that does not exist
    assert [a.status_code for a in (read, cancel, output)] == [404, 404, 404]
    assert {_code(a) for a in (read, cancel, output)} == {"task_not_found"}
    unknown = stack.http.get("/api/v1/tasks/00000000-0000-4000-8000-000000000000",
                             headers=_as(BOB))
    assert read.json()["error"]["message"].replace(task_id, "X") == \
        unknown.json()["error"]["message"].replace("00000000-0000-4000-8000-000000000000", "X")
    # And Alice still can
    assert stack.http.get(f"/api/v1/tasks/{task_id}/outputs/0",
                          headers=_as(ALICE)).status_code == 200


def test_a_pending_task_cannot_be_cancelled_by_another_key(stack: Stack) -> None:
    # Given Alice's task, not finished yet
    created = stack.http.post("/api/v1/generate", json=txt2img_body(steps=100),
                              headers=_as(ALICE))
    task_id = created.json()["task_id"]
    # When Bob tries to cancel it
    assert stack.http.delete(f"/api/v1/tasks/{task_id}", headers=_as(BOB)).status_code == 404
    # Then it runs to the end untouched
    record = wait_until(lambda: (r := stack.http.get(f"/api/v1/tasks/{task_id}",
                                                     headers=_as(ALICE)).json())["status"]
                        in ("succeeded", "failed", "cancelled") and r, 60, "the task to end")
    assert record["status"] == "succeeded", record


def test_idempotency_keys_are_scoped_per_api_key(stack: Stack) -> None:
    # Given Alice used an Idempotency-Key
    headers = {"Idempotency-Key": "order-42"}
    first = stack.http.post("/api/v1/generate", json=txt2img_body(seed=1),
                            headers={**_as(ALICE), **headers})
    assert first.status_code == 202
    # When Bob uses the same key with another body, there is no conflict and no leak
    bob = stack.http.post("/api/v1/generate", json=txt2img_body(seed=2),
                          headers={**_as(BOB), **headers})
    assert bob.status_code == 202
    assert bob.json()["task_id"] != first.json()["task_id"]
    assert first.json()["task_id"] not in bob.text
    # And each key's replay is its own
    alice_again = stack.http.post("/api/v1/generate", json=txt2img_body(seed=1),
                                  headers={**_as(ALICE), **headers})
    bob_again = stack.http.post("/api/v1/generate", json=txt2img_body(seed=2),
                                headers={**_as(BOB), **headers})
    assert alice_again.json()["task_id"] == first.json()["task_id"]
    assert bob_again.json()["task_id"] == bob.json()["task_id"]


def test_records_and_logs_never_carry_the_key(stack: Stack) -> None:
    assert stack.gateway is not None
    log = stack.gateway.log_path.read_text()
    assert ALICE not in log and BOB not in log
