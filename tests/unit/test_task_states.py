"""Task state transitions (pure)."""

from __future__ import annotations

import pytest

from actors import tasks
from actors.tasks import TaskRecord


def record(status: str = tasks.QUEUED, **fields: object) -> TaskRecord:
    return TaskRecord(task_id="t", status=status, graph={}, created_at="2026-01-01T00:00:00Z",
                      **fields)  # type: ignore[arg-type]


def test_a_task_runs_to_success() -> None:
    bound = tasks.bound(record(), "node-a")
    assert (bound.status, bound.node, bound.attempts) == (tasks.QUEUED, "node-a", 1)
    running = tasks.started(bound, "t1")
    assert (running.status, running.started_at) == (tasks.RUNNING, "t1")
    half = tasks.progressed(running, 5, 10)
    assert half.progress == {"value": 5, "max": 10, "fraction": 0.5}
    done = tasks.succeeded(half, [{"index": 0}], "t2")
    assert (done.status, done.finished_at, done.progress["fraction"]) == (  # type: ignore[index]
        tasks.SUCCEEDED, "t2", 1.0)
    assert done.final


@pytest.mark.parametrize("status,ended_now,result", [
    (tasks.QUEUED, True, tasks.CANCELLED),
    (tasks.RUNNING, False, tasks.RUNNING),
    (tasks.CANCELLED, True, tasks.CANCELLED),
])
def test_cancel_request(status: str, ended_now: bool, result: str) -> None:
    new, now = tasks.cancel_requested(record(status), "t")
    assert (new.status, now, new.cancel_requested or status == tasks.CANCELLED) == (
        result, ended_now, True)


@pytest.mark.parametrize("status", [tasks.SUCCEEDED, tasks.FAILED])
def test_finished_tasks_cannot_change(status: str) -> None:
    for change in (lambda r: tasks.bound(r, "n"), lambda r: tasks.started(r, "t"),
                   lambda r: tasks.cancel_requested(r, "t"), tasks.requeued,
                   lambda r: tasks.failed(r, {}, "t")):
        with pytest.raises(tasks.InvalidTransition):
            change(record(status))


def test_requeue_keeps_the_attempt_and_clears_the_node() -> None:
    lost = tasks.requeued(tasks.started(tasks.bound(record(), "a"), "t"))
    assert (lost.status, lost.node, lost.attempts, lost.started_at) == (tasks.QUEUED, None, 1,
                                                                         None)


def test_records_round_trip_through_json_dicts() -> None:
    original = tasks.succeeded(tasks.bound(record(priority=3), "a"), [{"index": 0}], "t")
    assert TaskRecord.from_dict(original.to_dict()) == original
    assert set(original.public()) == {"task_id", "status", "workflow", "params", "node",
                                      "progress", "attempts", "created_at", "started_at",
                                      "finished_at", "outputs", "error"}
