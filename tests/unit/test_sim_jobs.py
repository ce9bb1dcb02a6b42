"""ComfyUI 0.33.0's jobs view: statuses, list items, filters, sorting and pages."""

from __future__ import annotations

from typing import Any

import pytest

from comfyui_sim import jobs


def _history(number: int, create: int, events: list[tuple[str, int]], status_str: str,
             outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"prompt": [number, f"p{number}", {"1": {}}, {"create_time": create}, ["1"]],
            "outputs": outputs or {},
            "status": {"status_str": status_str, "completed": status_str == "success",
                       "messages": [[e, {"timestamp": t}] for e, t in events]}}


IMAGE = {"filename": "a_00001_.png", "subfolder": "", "type": "output"}
HISTORY = {
    "p0": _history(0, 100, [("execution_start", 101), ("execution_success", 150)], "success",
                   {"9": {"images": [IMAGE]}}),
    "p1": _history(1, 200, [("execution_start", 201), ("execution_interrupted", 205)], "error"),
    "p2": _history(2, 300, [("execution_start", 301), ("execution_error", 400)], "error"),
}
RUNNING = [[3, "p3", {}, {"create_time": 400}, ["1"]]]
PENDING = [[4, "p4", {}, {"create_time": 500}, ["1"]], [5, "p5", {}, {"create_time": 500}, []]]
ALL = jobs.all_jobs(RUNNING, PENDING, HISTORY)


@pytest.mark.parametrize("status_str,events,expected", [
    ("success", ["execution_start", "execution_success"], "completed"),
    ("error", ["execution_start", "execution_interrupted"], "cancelled"),
    ("error", ["execution_start", "execution_error"], "failed"),
])
def test_a_finished_prompts_status(status_str: str, events: list[str], expected: str) -> None:
    status = {"status_str": status_str, "messages": [[e, {}] for e in events]}
    assert jobs.history_status(status) == expected


def test_the_default_list_is_every_job_newest_first() -> None:
    body = jobs.listing(ALL, jobs.parse_query({}))
    assert [(j["id"], j["status"]) for j in body["jobs"]] == [
        ("p5", "pending"), ("p4", "pending"), ("p3", "in_progress"), ("p2", "failed"),
        ("p1", "cancelled"), ("p0", "completed")]
    assert body["pagination"] == {"offset": 0, "limit": None, "total": 6, "has_more": False}


def test_a_finished_item_has_its_times_and_first_output_a_queued_one_has_neither() -> None:
    done = jobs.find(ALL, "p0")
    queued = jobs.find(ALL, "p4")
    assert done is not None and queued is not None
    assert done.summary() == {
        "id": "p0", "status": "completed", "priority": 0, "create_time": 100,
        "execution_start_time": 101, "execution_end_time": 150, "outputs_count": 1,
        "previewable_outputs_count": 1,
        "preview_output": {**IMAGE, "nodeId": "9", "mediaType": "images"}}
    assert queued.summary() == {"id": "p4", "status": "pending", "priority": 4,
                                "create_time": 500, "outputs_count": 0,
                                "previewable_outputs_count": 0}
    assert set(done.detail()) - set(done.summary()) == {"outputs", "execution_status",
                                                        "workflow"}
    assert queued.detail() == queued.summary()


def test_status_filter_limit_and_offset_page_through_the_matches() -> None:
    body = jobs.listing(ALL, jobs.parse_query({"status": "completed,failed,cancelled",
                                               "limit": "1", "offset": "1"}))
    assert [j["id"] for j in body["jobs"]] == ["p1"]
    assert body["pagination"] == {"offset": 1, "limit": 1, "total": 3, "has_more": True}


def test_sorting_by_execution_duration_ascending() -> None:
    query = jobs.parse_query({"status": "completed,failed,cancelled",
                              "sort_by": "execution_duration", "sort_order": "asc"})
    assert [j["id"] for j in jobs.listing(ALL, query)["jobs"]] == ["p1", "p0", "p2"]


@pytest.mark.parametrize("params,message", [
    ({"status": "bogus"}, "Invalid status value(s): bogus. Valid values: pending, in_progress, "
                          "completed, failed, cancelled"),
    ({"sort_by": "name"}, "Invalid sort_by: name"),
    ({"sort_order": "up"}, "Invalid sort_order: up"),
    ({"limit": "x"}, "Invalid limit"),
    ({"offset": "-1"}, "Invalid offset"),
])
def test_a_bad_query_is_refused_with_the_reason(params: dict[str, str], message: str) -> None:
    with pytest.raises(jobs.JobQueryError) as caught:
        jobs.parse_query(params)
    assert str(caught.value).startswith(message)


def test_an_unknown_id_is_not_found() -> None:
    assert jobs.find(ALL, "nope") is None
