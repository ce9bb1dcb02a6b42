"""Batches without servers: expanding a batch body, seeds, naming bad items, the summary (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.tasks import TaskRecord, cancelled, succeeded
from comfy_service.errors import BatchTooLarge, ValidationFailed, WorkflowNotFound
from comfy_service.templates import load_templates
from gateway.batches import (
    BatchRecord,
    batch_invalid,
    expand,
    not_in_batches,
    seeded,
    summarise,
)
from tests.support.service import txt2img_body

TEMPLATES = load_templates()
SEED_MAX = TEMPLATES["txt2img"].params["seed"]["max"]


def draw(limit: int) -> int:
    return 40


def fields(error: ValidationFailed) -> list[str]:
    return [field["field"] for field in error.details["fields"]]


def test_a_list_of_requests_expands_to_each_item_named_by_its_place() -> None:
    bodies = [txt2img_body(steps=2), txt2img_body(steps=3)]
    assert expand({"requests": bodies}, 100, TEMPLATES, draw) == [
        ("requests[0]", bodies[0]), ("requests[1]", bodies[1])]


@pytest.mark.parametrize("request_body,seeds", [
    (txt2img_body(seed=7), [7, 8, 9]),                 # given: counted up from it
    (txt2img_body(), [40, 41, 42]),                    # absent: drawn once, then counted up
    (txt2img_body(seed=SEED_MAX - 1), [SEED_MAX - 1, SEED_MAX, 0]),  # wraps within bounds
])
def test_count_with_vary_seed_makes_consecutive_seeds(request_body: dict[str, Any],
                                                      seeds: list[int]) -> None:
    items = expand({"request": request_body, "count": 3, "vary_seed": True}, 100, TEMPLATES,
                   draw)
    assert [where for where, _ in items] == ["request"] * 3
    assert [item["params"]["seed"] for _, item in items] == seeds
    assert all(item["params"]["steps"] == 3 for _, item in items)


@pytest.mark.parametrize("request_body", [
    txt2img_body(seed=-1),                             # invalid: left for validation to name
    txt2img_body(seed="x"),
    {"workflow_json": {"1": {"class_type": "SaveImage", "inputs": {}}}},  # no seed parameter
    {"workflow": "nope"},
    {"params": "not an object"},
])
def test_vary_seed_copies_what_it_cannot_count_up(request_body: Any) -> None:
    assert seeded(request_body, 2, TEMPLATES, draw) == [request_body, request_body]


def test_count_without_vary_seed_copies_the_request() -> None:
    body = txt2img_body(seed=5)
    assert [item for _, item in expand({"request": body, "count": 2}, 100, TEMPLATES, draw)] \
        == [body, body]


@pytest.mark.parametrize("body,named", [
    ([], ["body"]),
    ({"requests": []}, ["requests"]),
    ({"requests": "x"}, ["requests"]),
    ({"requests": [{}], "count": 2}, ["count"]),
    ({"request": {}, "count": 0}, ["count"]),
    ({"request": {}, "count": True}, ["count"]),
    ({"request": {}, "count": 2, "vary_seed": "yes"}, ["vary_seed"]),
    ({"count": 2}, ["request"]),
    ({"request": {}, "count": 2, "extra": 1}, ["extra"]),
])
def test_a_malformed_batch_is_a_422_naming_the_field(body: Any, named: list[str]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        expand(body, 100, TEMPLATES, draw)
    assert fields(caught.value) == named


@pytest.mark.parametrize("body", [{"requests": [{}] * 4}, {"request": {}, "count": 4}])
def test_past_max_batch_is_a_413_saying_the_limit(body: dict[str, Any]) -> None:
    with pytest.raises(BatchTooLarge) as caught:
        expand(body, 3, TEMPLATES, draw)
    assert (caught.value.status, caught.value.code) == (413, "batch_too_large")
    assert caught.value.details == {"max_batch": 3, "requested": 4}


def test_bad_items_are_named_from_the_batch_body_once_each() -> None:
    failures = [
        ("requests[3]", ValidationFailed("bad", {"fields": [
            {"field": "params.steps", "message": "must be <= 150"}]})),
        ("requests[4]", WorkflowNotFound("no workflow 'x'", {"available": ["txt2img"]})),
        ("requests[5]", ValidationFailed("bad", {"fields": [
            {"field": "body", "message": "must be a JSON object"}]})),
        ("requests[6]", ValidationFailed("no node can run it", {"error": {"type": "x"},
                                                                "node_errors": {}})),
        ("request", ValidationFailed("bad", {"fields": [{"field": "params.cfg", "message": "m"}]})),
        ("request", ValidationFailed("bad", {"fields": [{"field": "params.cfg", "message": "m"}]})),
    ]
    error = batch_invalid(failures)
    assert error.status == 422 and "nothing was stored" in error.message
    assert fields(error) == ["requests[3].params.steps", "requests[4].workflow", "requests[5]",
                             "requests[6]", "request.params.cfg"]
    assert error.details["items"] == {"requests[4]": {"available": ["txt2img"]},
                                      "requests[6]": {"error": {"type": "x"}, "node_errors": {}}}


def test_a_webhook_in_a_batch_item_is_refused_by_name() -> None:
    assert not_in_batches(txt2img_body()) is None
    error = not_in_batches({**txt2img_body(), "webhook": {"url": "https://example.com/h"}})
    assert error is not None
    assert batch_invalid([("requests[2]", error)]).details["fields"][0]["field"] \
        == "requests[2].webhook"


def record(task_id: str, status: str = "queued") -> TaskRecord:
    new = TaskRecord(task_id=task_id, status="queued", graph={}, created_at="t0")
    if status == "succeeded":
        return succeeded(new, [{"index": 0, "filename": "a.png"}], "t1")
    return cancelled(new, "t1") if status == "cancelled" else new


def test_the_summary_counts_every_status_and_lists_tasks_in_order() -> None:
    batch = BatchRecord("b1", "t0", ("a", "b", "c", "d"), owner="tenant")
    summary = summarise(batch, [record("a", "succeeded"), record("b"), record("c", "cancelled"),
                                None])
    assert summary["total"] == 4
    assert summary["counts"] == {"queued": 1, "running": 0, "succeeded": 1, "failed": 0,
                                 "cancelled": 1}
    assert summary["tasks"] == [
        {"task_id": "a", "status": "succeeded", "outputs": [{"index": 0, "filename": "a.png"}]},
        {"task_id": "b", "status": "queued", "outputs": []},
        {"task_id": "c", "status": "cancelled", "outputs": []},
        {"task_id": "d", "status": "expired", "outputs": []}]


def test_a_batch_record_round_trips_through_its_dict() -> None:
    batch = BatchRecord("b1", "t0", ("a", "b"), owner=None)
    assert BatchRecord.from_dict(batch.to_dict()) == batch
