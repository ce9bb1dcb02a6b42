"""Batches against real processes: a gateway, a worker, Redis and a simulated node; the Redis
round trips of storing a batch counted with MONITOR on a gateway and Redis alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from comfy_service import constants as c
from gateway.app import tenant_of
from tests.support.processes import wait_until
from tests.support.service import Stack, slow_body, txt2img_body

OWNER, OTHER, CLEAN, CAPPED, RATED = ("owner-key-000", "other-key-111", "clean-key-222",
                                      "capped-key-333", "rated-key-444")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # (the stack's own helpers act as OWNER; CAPPED may have 3 tasks queued or running, RATED
    # may send 2 requests and then one every 100 s)
    service = Stack(tmp_path_factory.mktemp("batches"), nodes=1, step_ms=20, env={
        "API_KEYS": f"{OWNER},{OTHER},{CLEAN},{CAPPED},{RATED}",
        "API_KEY_LIMITS": f"{CAPPED}=//3;{RATED}=0.01/2/"})
    try:
        yield service
    finally:
        service.stop()


def call(stack: Stack, method: str, path: str, key: str = OWNER, **kwargs: Any) -> httpx.Response:
    return stack.http.request(method, path, headers={"Authorization": f"Bearer {key}"},
                              **kwargs)


def submit(stack: Stack, body: dict[str, Any], key: str = OWNER) -> dict[str, Any]:
    answer = call(stack, "POST", "/api/v1/batches", key, json=body)
    assert answer.status_code == 202, answer.text
    accepted: dict[str, Any] = answer.json()
    assert answer.headers["location"] == f"/api/v1/batches/{accepted['batch_id']}"
    return accepted


def summary(stack: Stack, batch_id: str) -> dict[str, Any]:
    answer = call(stack, "GET", f"/api/v1/batches/{batch_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_counts(stack: Stack, batch_id: str, **counts: int) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = summary(stack, batch_id)
        return found if all(found["counts"][k] == v for k, v in counts.items()) else None
    return wait_until(reached, 60, lambda: f"batch {batch_id} to reach {counts}\n{stack.logs()}",
                      interval=0.05)


def stored(stack: Stack, tenant_key: str) -> tuple[int, int, int]:
    """The key's tasks in flight, and every task and batch record in Redis."""
    client = redis.Redis.from_url(stack.redis.url)
    try:
        return (client.zcard(c.ACTIVE_KEY.format(tenant=tenant_of(tenant_key))),
                sum(1 for _ in client.scan_iter(c.TASK_KEY.format(task_id="*"))),
                sum(1 for _ in client.scan_iter(c.BATCH_KEY.format(batch_id="*"))))
    finally:
        client.close()


def test_a_batch_of_ten_runs_and_its_summary_counts_them_all(stack: Stack) -> None:
    # Given a batch of ten requests
    accepted = submit(stack, {"requests": [txt2img_body(steps=2, seed=i) for i in range(10)]})
    assert len(set(accepted["task_ids"])) == 10 and accepted["created_at"]
    # When they have run, Then the summary counts ten succeeded, each with its outputs
    done = wait_counts(stack, accepted["batch_id"], succeeded=10)
    assert done["total"] == 10 and done["counts"] == {**dict.fromkeys(STATUSES, 0),
                                                      "succeeded": 10}
    assert [task["task_id"] for task in done["tasks"]] == accepted["task_ids"]
    assert all(task["outputs"] and task["outputs"][0]["content_type"] == "image/png"
               for task in done["tasks"])
    # And each task is an ordinary task of the key, with the params of its own request
    assert [stack.task(t)["params"]["seed"] for t in accepted["task_ids"]] == list(range(10))


def test_count_with_vary_seed_makes_consecutive_distinct_seeds(stack: Stack) -> None:
    # When one request is sent four times over with vary_seed
    accepted = submit(stack, {"request": txt2img_body(steps=2, seed=100), "count": 4,
                              "vary_seed": True})
    # Then the four tasks have seeds 100 to 103 and otherwise the same params
    params = [stack.task(task_id)["params"] for task_id in accepted["task_ids"]]
    assert [p["seed"] for p in params] == [100, 101, 102, 103]
    assert {p["steps"] for p in params} == {2}
    wait_counts(stack, accepted["batch_id"], succeeded=4)


def test_an_invalid_item_refuses_the_whole_batch_and_stores_nothing(stack: Stack) -> None:
    # Given a key with nothing in flight
    before = stored(stack, CLEAN)
    assert before[0] == 0
    # When it sends a batch whose items 1 and 3 are invalid
    answer = call(stack, "POST", "/api/v1/batches", CLEAN, json={"requests": [
        txt2img_body(), txt2img_body(steps=0), txt2img_body(), {"workflow": "nope"}]})
    # Then it is one 422 naming each bad field from the batch body
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert [f["field"] for f in error["details"]["fields"]] == ["requests[1].params.steps",
                                                                 "requests[3].workflow"]
    # And nothing was stored: no task, no batch, the key's tasks in flight unchanged
    assert stored(stack, CLEAN) == before


def test_a_batch_counts_as_its_size_against_the_cap_all_or_nothing(stack: Stack) -> None:
    # Given a key allowed 3 tasks in flight, When it sends a batch of 4
    before = stored(stack, CAPPED)
    refused = call(stack, "POST", "/api/v1/batches", CAPPED,
                   json={"request": slow_body(150), "count": 4})
    # Then it is a 429 quota_exceeded with a Retry-After, and nothing was stored
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert stored(stack, CAPPED) == before
    # When it sends 3, Then they are accepted and fill the cap: a single task more is refused
    accepted = submit(stack, {"request": slow_body(150), "count": 3}, CAPPED)
    assert stored(stack, CAPPED)[0] == 3
    one_more = call(stack, "POST", "/api/v1/generate", CAPPED, json=txt2img_body())
    assert one_more.status_code == 429, one_more.text
    assert call(stack, "DELETE", f"/api/v1/batches/{accepted['batch_id']}",
                CAPPED).status_code in (200, 202)


def test_a_batch_is_one_request_against_the_key_s_rate(stack: Stack) -> None:
    # Given a key with a bucket of 2 requests, When it sends a batch of 5
    accepted = submit(stack, {"request": txt2img_body(steps=1), "count": 5}, RATED)
    # Then that took one request: one more passes, the next is 429 rate_limited
    path = f"/api/v1/batches/{accepted['batch_id']}"
    assert call(stack, "GET", path, RATED).status_code == 200
    refused = call(stack, "GET", path, RATED)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"


@pytest.mark.parametrize("body", [{"requests": [txt2img_body()] * 101},
                                  {"request": txt2img_body(), "count": 101}])
def test_more_than_max_batch_is_a_413_batch_too_large(stack: Stack, body: dict[str, Any]) -> None:
    before = stored(stack, OWNER)[1:]
    answer = call(stack, "POST", "/api/v1/batches", json=body)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == {
        "code": "batch_too_large", "message": answer.json()["error"]["message"],
        "details": {"max_batch": 100, "requested": 101}}
    assert stored(stack, OWNER)[1:] == before


def test_delete_cancels_what_has_not_ended_and_keeps_what_has(stack: Stack) -> None:
    # Given a batch whose first task is quick and whose three others are slow
    accepted = submit(stack, {"requests": [txt2img_body(steps=1),
                                           *(slow_body(150) for _ in range(3))]})
    batch_id = accepted["batch_id"]
    stack.wait_task(accepted["task_ids"][0])
    # When the batch is cancelled
    answer = call(stack, "DELETE", f"/api/v1/batches/{batch_id}")
    # Then nothing is left queued: running ones are being interrupted (202), and in the end
    # the quick one stays succeeded and the rest are cancelled
    assert answer.status_code in (200, 202), answer.text
    assert answer.json()["counts"]["queued"] == 0
    assert (answer.status_code == 202) == (answer.json()["counts"]["running"] > 0)
    final = wait_counts(stack, batch_id, succeeded=1, cancelled=3)
    assert [t["status"] for t in final["tasks"]] == ["succeeded"] + ["cancelled"] * 3
    # And cancelling again changes nothing and answers 200
    again = call(stack, "DELETE", f"/api/v1/batches/{batch_id}")
    assert again.status_code == 200 and again.json() == final


def test_another_key_cannot_see_or_cancel_a_batch(stack: Stack) -> None:
    accepted = submit(stack, {"request": txt2img_body(steps=1), "count": 2})
    path = f"/api/v1/batches/{accepted['batch_id']}"
    for method in ("GET", "DELETE"):
        answer = call(stack, method, path, OTHER)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "batch_not_found"
    assert call(stack, "GET", "/api/v1/batches/" + "0" * 32).status_code == 404
    # (its tasks are untouched by the other key's DELETE)
    wait_counts(stack, accepted["batch_id"], succeeded=2)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway and Redis alone: every command Redis sees is the gateway's (or ours)."""
    service = Stack(tmp_path_factory.mktemp("batch-round-trips"), nodes=0, workers=0)
    try:
        yield service
    finally:
        service.stop()


def test_storing_a_batch_of_100_is_one_round_trip(quiet: Stack) -> None:
    client, marker = (redis.Redis.from_url(quiet.redis.url, decode_responses=True)
                      for _ in range(2))
    marker.ping()  # connected (and introduced) before we start watching
    batch = {"request": txt2img_body(steps=1), "count": 100, "vary_seed": True}
    # Given a gateway that has answered a batch already (its connections open, script loaded)
    assert quiet.http.post("/api/v1/batches", json={**batch, "count": 1}).status_code == 202
    # When a batch of 100 is sent while Redis reports every command it runs
    with client.monitor() as monitor:
        answer = quiet.http.post("/api/v1/batches", json=batch)
        marker.echo("batch-sent")
        seen = []
        for entry in monitor.listen():
            if entry["command"] == "ECHO batch-sent":
                break
            seen.append(entry)
    assert answer.status_code == 202, answer.text
    # Then the gateway sent a handful of commands, one of them the script that stored the
    # whole batch, which ran 100 SETs of task records (and the batch's) inside Redis
    sent = [entry["command"].split(" ", 1)[0].upper() for entry in seen
            if entry.get("client_type") != "lua"]
    assert sent.count("EVALSHA") == 1 and len(sent) <= 4, sent
    inside = [entry["command"].split(" ", 1)[0].upper() for entry in seen
              if entry.get("client_type") == "lua"]
    assert inside.count("SET") == 101 and inside.count("PUBLISH") == 1
    # And every task is admitted: waiting in the ready queue, none left for a sweep
    assert client.zcard(c.READY_KEY) == 101 and client.zcard(c.ACCEPTED_KEY) == 0
    client.close()
    marker.close()
