"""Behaviour under load and failure, with real processes: cancel, crashes, retries, priority."""

from __future__ import annotations

import json
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from actors.tasks import QUEUED, TaskRecord
from comfy_service import constants as c
from comfy_service.templates import load_templates, render, resolve
from tests.support.processes import wait_until
from tests.support.service import Stack, slow_body, txt2img_body


@pytest.fixture()
def stack_factory(tmp_path: pathlib.Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", **kwargs)
        stacks.append(stack)
        return stack
    yield make
    for stack in stacks:
        stack.stop()


def sim_history(stack: Stack, index: int = 0) -> dict[str, Any]:
    history: dict[str, Any] = httpx.get(f"{stack.sims[index].url}/history", timeout=5).json()
    return history


def test_cancel_in_each_state(stack_factory: Any) -> None:
    # Steps of 200 ms: the long task runs for 30 s unless cancelled, longer than every
    # deadline below, so it is still running when the test cancels it, however busy the machine
    stack = stack_factory(nodes=1, step_ms=200)
    # Given a long task running, a second waiting in the node's own queue, a third not bound
    running = stack.submit(slow_body(150))
    stack.wait_task(running, ("running",))
    in_node_queue = stack.submit(slow_body(149))
    waiting = stack.submit(slow_body(148))
    wait_until(lambda: stack.task(in_node_queue)["node"], 10, "the second task to be bound")
    assert stack.task(waiting)["node"] is None

    # When the unbound task is cancelled: at once
    answer = stack.http.delete(f"/api/v1/tasks/{waiting}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    # When the task waiting in ComfyUI's queue is cancelled: at once, and gone from the node
    answer = stack.http.delete(f"/api/v1/tasks/{in_node_queue}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    wait_until(lambda: in_node_queue not in str(httpx.get(f"{stack.sims[0].url}/queue").json()),
               10, "the cancelled task to leave the node's queue")
    assert stack.task(running)["status"] == "running"  # the targeted delete spared it
    # When the running task is cancelled: 202, then cancelled once ComfyUI interrupted it
    answer = stack.http.delete(f"/api/v1/tasks/{running}")
    assert answer.status_code == 202
    assert stack.wait_task(running)["status"] == "cancelled"
    # And a second DELETE of a cancelled task is 200
    assert stack.http.delete(f"/api/v1/tasks/{running}").status_code == 200
    # Then ComfyUI saw only the running one, and recorded it as interrupted
    history = sim_history(stack)
    assert set(history) == {running}
    assert history[running]["status"]["messages"][-1][0] == "execution_interrupted"
    assert stack.task(waiting)["status"] == "cancelled" and stack.task(waiting)["attempts"] == 0
    # And the node is free for new work
    assert stack.wait_task(stack.submit(txt2img_body(steps=1)))["status"] == "succeeded"


def test_a_task_survives_a_sigkilled_worker_and_runs_once(stack_factory: Any) -> None:
    stack = stack_factory(nodes=1, step_ms=30)
    task_id = stack.submit(slow_body(100))
    stack.wait_task(task_id, ("running",))
    # When the worker that follows it is killed hard, and another worker is running
    stack.start_worker()
    stack.workers[0].proc.send_signal(signal.SIGKILL)
    # Then the task still succeeds, with one attempt and exactly one output
    task = stack.wait_task(task_id, timeout=60)
    assert task["status"] == "succeeded", (task, stack.logs())
    assert task["attempts"] == 1 and len(task["outputs"]) == 1
    # And ComfyUI ran the prompt exactly once
    assert list(sim_history(stack)) == [task_id]
    assert stack.http.get(f"/api/v1/tasks/{task_id}/outputs/0").status_code == 200


def test_a_running_task_its_node_forgot_is_submitted_again_after_its_worker_dies(
        stack_factory: Any) -> None:
    # Given a task running on the only node, followed by a worker that is then killed hard
    stack = stack_factory(nodes=1, step_ms=30)
    task_id = stack.submit(slow_body(100))
    stack.wait_task(task_id, ("running",))
    stack.workers[0].proc.send_signal(signal.SIGKILL)
    # And the node forgets the prompt meanwhile (interrupted, then its history cleared: as a
    # ComfyUI restarted under it would)
    node = stack.sims[0].url
    httpx.post(f"{node}/interrupt", timeout=5).raise_for_status()
    wait_until(lambda: task_id in sim_history(stack), 10, "the interrupt to land")
    httpx.post(f"{node}/history", json={"clear": True}, timeout=5).raise_for_status()
    assert sim_history(stack) == {}
    # When another worker adopts it after the lease
    stack.start_worker()
    # Then it is submitted again on the node and succeeds, its second attempt
    task = stack.wait_task(task_id, timeout=60)
    assert (task["status"], task["attempts"]) == ("succeeded", 2), (task, stack.logs())
    assert '"task.resubmitted"' in stack.logs()
    assert list(sim_history(stack)) == [task_id]


def test_a_task_on_a_killed_node_finishes_elsewhere(stack_factory: Any) -> None:
    stack = stack_factory(nodes=2, step_ms=30)
    task_id = stack.submit(slow_body(100))
    first = stack.wait_task(task_id, ("running",))
    dead = next(s for s in stack.sims if s.url.endswith(first["node"].split(":")[-1]))
    dead.kill()
    task = stack.wait_task(task_id, timeout=60)
    assert task["status"] == "succeeded", (task, stack.logs())
    assert task["node"] != first["node"] and task["attempts"] == 2
    assert len(task["outputs"]) == 1


def test_a_task_fails_with_node_lost_after_the_attempt_limit(stack_factory: Any) -> None:
    stack = stack_factory(nodes=3, step_ms=10, env={"MAX_ATTEMPTS": "3"})
    for sim in stack.sims:
        httpx.post(f"{sim.url}/sim/faults", json={"crash_on_prompt": True}).raise_for_status()
    task = stack.wait_task(stack.submit(txt2img_body(steps=2)), timeout=60)
    assert task["status"] == "failed", (task, stack.logs())
    assert task["error"]["code"] == "node_lost" and task["attempts"] == 3


def test_execution_errors_and_timeouts_fail_the_task(stack_factory: Any) -> None:
    stack = stack_factory(nodes=1, step_ms=20)
    httpx.post(f"{stack.sims[0].url}/sim/faults",
               json={"fail_next": 1, "failure_message": "CUDA out of memory"}).raise_for_status()
    failed = stack.wait_task(stack.submit(txt2img_body(steps=2)))
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["code"] == "execution_error"
    assert failed["error"]["message"] == "CUDA out of memory"
    body = slow_body(150) | {"timeout_s": 0.5}
    timed_out = stack.wait_task(stack.submit(body))
    assert timed_out["status"] == "failed" and timed_out["error"]["code"] == "timeout"
    assert sim_history(stack)[timed_out["task_id"]]["status"]["messages"][-1][0] == \
        "execution_interrupted"


def test_higher_priority_runs_first_under_backlog(stack_factory: Any) -> None:
    # Steps of 200 ms: the blocker holds the slot for 30 s unless cancelled, longer than the
    # deadline for the backlog to be admitted, so it is still running when the test cancels it
    stack = stack_factory(nodes=1, step_ms=200, env={"NODE_SLOTS": "1"})
    # Given the only slot busy with a long task, and a backlog of low then high priority
    blocker = stack.submit(slow_body(150))
    stack.wait_task(blocker, ("running",))
    low = [stack.submit(txt2img_body(steps=1, seed=i) | {"priority": 0}) for i in range(3)]
    high = stack.submit(txt2img_body(steps=1, seed=99) | {"priority": 10})
    wait_until(lambda: stack.http.get("/readyz").json()["tasks_waiting"] == 4, 20,
               "all four to be admitted to the ready queue")
    # When the slot frees
    assert stack.http.delete(f"/api/v1/tasks/{blocker}").status_code == 202
    # Then the high-priority task runs before the earlier low ones
    tasks = {t: stack.wait_task(t) for t in [*low, high]}
    order = sorted(tasks, key=lambda t: tasks[t]["started_at"])
    assert order == [high, *low]


def test_a_long_task_does_not_hold_up_work_another_node_can_do(stack_factory: Any) -> None:
    stack = stack_factory(nodes=2, step_ms=20, env={"NODE_SLOTS": "1"})
    long_task = stack.submit(slow_body(150) | {"timeout_s": 3600})
    httpx.post(f"{stack.sims[0].url}/sim/faults", json={"step_ms": 1000}).raise_for_status()
    httpx.post(f"{stack.sims[1].url}/sim/faults", json={"step_ms": 1000}).raise_for_status()
    stack.wait_task(long_task, ("running",))
    # the long task now takes minutes; the other node's slot takes the short ones meanwhile
    for sim in stack.sims:
        if not stack.task(long_task)["node"].endswith(sim.url.rsplit(":", 1)[1]):
            httpx.post(f"{sim.url}/sim/faults", json={"step_ms": 20}).raise_for_status()
    short = [stack.submit(txt2img_body(steps=1, seed=i)) for i in range(4)]
    for task_id in short:
        assert stack.wait_task(task_id, timeout=30)["status"] == "succeeded"
    assert stack.task(long_task)["status"] == "running"
    stack.http.delete(f"/api/v1/tasks/{long_task}")


def test_tasks_survive_a_gateway_restart(stack_factory: Any) -> None:
    # Given a task accepted by the gateway, still waiting (no worker yet, so it cannot finish
    # before the restart, however slow the machine)
    stack = stack_factory(nodes=1, step_ms=20, workers=0)
    task_id = stack.submit(txt2img_body(steps=2, seed=11))
    accepted = stack.task(task_id)
    assert accepted["status"] == "queued", accepted
    old = stack.gateway
    assert old is not None
    # When the gateway process stops: it has exited and nothing answers on its port
    old.stop()
    assert old.proc.returncode is not None and not old.alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.url}/healthz", timeout=5)
    # And a new gateway process starts on the same port
    stack.start_gateway()
    new = stack.gateway
    assert new is not None and new is not old and new.alive()
    assert new.proc.pid != old.proc.pid
    # Then the new process serves the task the old one accepted, unchanged
    assert stack.task(task_id) == accepted
    # And once a worker runs, it succeeds, as does a task the new process accepts
    stack.start_worker()
    after = stack.submit(txt2img_body(steps=2, seed=12))
    for task in (task_id, after):
        done = stack.wait_task(task)
        assert done["status"] == "succeeded" and len(done["outputs"]) == 1, (done, stack.logs())
    assert stack.http.get(f"/api/v1/tasks/{task_id}/outputs/0").status_code == 200


def test_a_task_whose_admission_message_was_lost_still_runs(stack_factory: Any) -> None:
    # Given a task stored as the gateway stores it, whose admission message never went out
    # (the gateway died in between): recorded as accepted a while ago, not in the ready queue
    stack = stack_factory(nodes=1, step_ms=10)
    template = load_templates()["txt2img"]
    values, _ = resolve(template, {"prompt": "x", "steps": 1, "seed": 1}, lambda n: 0)
    record = TaskRecord(task_id="lost-admission", status=QUEUED, created_at="2026-01-01T00:00:00Z",
                        graph=render(template, values, "cs/lost-admission"), workflow="txt2img",
                        params=values, sequence=1)
    client = redis.Redis.from_url(stack.redis.url)
    client.set(c.TASK_KEY.format(task_id=record.task_id), json.dumps(record.to_dict()))
    client.zadd(c.ACCEPTED_KEY, {record.task_id: int(time.time() * 1000) - 60_000})
    # Then a worker's sweep admits it and it runs
    assert stack.wait_task(record.task_id, timeout=30)["status"] == "succeeded"
    assert client.zscore(c.ACCEPTED_KEY, record.task_id) is None
    client.close()
