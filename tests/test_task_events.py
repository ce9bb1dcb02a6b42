"""GET /api/v1/tasks/{id}/events: Server-Sent Events from a real gateway, worker, Redis and a
simulated node, read with httpx-sse."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.support.processes import wait_until
from tests.support.service import Stack, slow_body, txt2img_body

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("events"), nodes=1, step_ms=50,
                  env={"API_KEYS": f"{ALICE},{BOB}", "SSE_KEEPALIVE_S": "0.5",
                       "SSE_MAX_STREAMS_PER_KEY": "2"})
    try:
        yield stack
    finally:
        stack.stop()


def _events(stack: Stack, task_id: str, last_event_id: str | None = None, stop_after: int = 0,
            key: str = ALICE) -> list[ServerSentEvent]:
    """Read a task's stream to its end (or `stop_after` events, then hang up)."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    seen = []
    with httpx.Client(base_url=stack.url, timeout=30) as client, \
            connect_sse(client, "GET", f"/api/v1/tasks/{task_id}/events",
                        headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            seen.append(event)
            if len(seen) == stop_after:
                break
    return seen


def _statuses(events: list[ServerSentEvent]) -> list[str]:
    return [json.loads(e.data)["status"] for e in events if e.event in ("state", "end")]


def test_a_stream_follows_a_task_from_queued_to_its_end(stack: Stack) -> None:
    task_id = stack.submit(txt2img_body(steps=20))
    events = _events(stack, task_id)
    names = [e.event for e in events]
    # It opens with the task now, then its changes, progress, outputs, and ends with `end`
    assert names[0] == "state" and names[-2:] == ["outputs", "end"]
    assert "progress" in names
    assert _statuses(events)[-2:] == ["running", "succeeded"]
    progress = [json.loads(e.data) for e in events if e.event == "progress"]
    assert progress[-1]["max"] == 20 and progress[-1]["node"]
    assert all(0 <= p["fraction"] <= 1 for p in progress)
    outputs = json.loads(events[-2].data)["outputs"]
    assert outputs == stack.task(task_id)["outputs"]
    # Every event has an id, and after the opening one they only grow
    ids = [_order(e.id) for e in events[1:]]
    assert all(e.id for e in events) and ids == sorted(set(ids))


def test_a_client_that_hangs_up_and_resumes_sees_every_event_once(stack: Stack) -> None:
    task_id = stack.submit(slow_body(40))
    first = _events(stack, task_id, stop_after=4)  # hang up mid-task
    assert len(first) == 4
    rest = _events(stack, task_id, last_event_id=first[-1].id)
    assert rest[-1].event == "end" and json.loads(rest[-1].data)["status"] == "succeeded"
    # Exactly what the stream holds after the point the first connection started from
    everything = _events(stack, task_id, last_event_id="0-0")
    resumed = [(e.id, e.event, e.data) for e in first[1:] + rest]
    assert resumed == [(e.id, e.event, e.data) for e in everything
                       if _order(e.id) > _order(first[0].id)]
    assert len({event_id for event_id, _, _ in resumed}) == len(resumed)  # none twice


def test_a_finished_task_streams_its_state_outputs_and_end_at_once(stack: Stack) -> None:
    task_id = stack.submit(txt2img_body(steps=2))
    stack.wait_task(task_id)
    assert [e.event for e in _events(stack, task_id)] == ["state", "outputs", "end"]


def test_idle_streams_get_keep_alive_comments(stack: Stack) -> None:
    # Given a task waiting behind a long one on the only node
    blocker = stack.submit(slow_body(60))
    waiting = stack.submit(slow_body(60))
    comments = 0
    with httpx.Client(base_url=stack.url, timeout=30) as client, client.stream(
            "GET", f"/api/v1/tasks/{waiting}/events",
            headers={"Authorization": f"Bearer {ALICE}"}) as response:
        for line in response.iter_lines():
            comments += line.startswith(":")
            if comments == 2:
                break
    assert comments == 2
    for task_id in (blocker, waiting):
        stack.http.delete(f"/api/v1/tasks/{task_id}")


def test_streams_are_bounded_per_key_and_private_to_it(stack: Stack) -> None:
    task_id = stack.submit(slow_body(60))
    headers = {"Authorization": f"Bearer {ALICE}"}
    url = f"{stack.url}/api/v1/tasks/{task_id}/events"
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", url, headers=headers) as one, \
                client.stream("GET", url, headers=headers) as two:
            assert one.status_code == two.status_code == 200
            third = client.get(url, headers=headers)
            assert third.status_code == 429
            assert third.json()["error"]["code"] == "too_many_streams"
            assert int(third.headers["Retry-After"]) >= 1
        # Once those two are closed, another may open
        def opens() -> bool:
            with client.stream("GET", url, headers=headers) as again:
                return again.status_code == 200
        wait_until(opens, 10, "a stream to open again")
        # Another key's task, or no task at all, is a 404
        foreign = client.get(url, headers={"Authorization": f"Bearer {BOB}"})
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "task_not_found"
        missing = client.get(f"{stack.url}/api/v1/tasks/nope/events", headers=headers)
        assert missing.status_code == 404
    stack.http.delete(f"/api/v1/tasks/{task_id}")


def test_a_cancelled_task_ends_its_stream(stack: Stack) -> None:
    task_id = stack.submit(slow_body(60))
    stack.wait_task(task_id, ("running",))
    stack.http.delete(f"/api/v1/tasks/{task_id}")
    events = _events(stack, task_id, last_event_id="0-0")
    assert events[-1].event == "end" and json.loads(events[-1].data)["status"] == "cancelled"



def _order(event_id: str) -> tuple[int, int]:
    millis, sequence = event_id.split("-")
    return int(millis), int(sequence)
