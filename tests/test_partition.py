"""Workers share the nodes: each follows its own part (sockets, binding, reports), the ready
queue stays shared, and when a worker dies or joins the parts move with no task lost or run
twice. Real Redis, gateway, workers and a farm of simulated nodes."""

from __future__ import annotations

import collections
import pathlib
import re
from collections.abc import Iterator

import httpx
import pytest

from actors.partition import owner
from tests.support.processes import FarmProcess, free_port, wait_until
from tests.support.service import FINAL, Stack, txt2img_body

NODES = 24
LINKED = re.compile(r'^comfy_service_node_up\{node="([^"]+)"\}', re.M)


@pytest.fixture
def farm(tmp_path: pathlib.Path) -> Iterator[FarmProcess]:
    process = FarmProcess(tmp_path / "farm", NODES, step_ms=150)
    try:
        yield process
    finally:
        process.stop()


def linked_nodes(metrics_port: int) -> set[str]:
    """The nodes a worker holds a link to: the node series on its /metrics (none before it
    serves them)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.ConnectError:
        return set()
    return set(LINKED.findall(text))


def share(names: list[str], workers: list[str], worker: str) -> set[str]:
    return {name for name in names if owner(name, workers) == worker}


def submit_batch(stack: Stack, count: int, steps: int, seed0: int) -> list[str]:
    answer = stack.http.post("/api/v1/batches", json={"requests": [
        txt2img_body(steps=steps, seed=seed) for seed in range(seed0, seed0 + count)]})
    assert answer.status_code == 202, answer.text
    task_ids: list[str] = answer.json()["task_ids"]
    return task_ids


def wait_final(stack: Stack, task_ids: list[str]) -> list[dict[str, object]]:
    def all_final() -> list[dict[str, object]] | None:
        records = [stack.task(task_id) for task_id in task_ids]
        return records if all(r["status"] in FINAL for r in records) else None
    def progress() -> str:
        records = [stack.task(task_id) for task_id in task_ids]
        states = collections.Counter((r["status"], r["node"], r["attempts"]) for r in records
                                     if r["status"] not in FINAL)
        return f"tasks to finish; not yet: {dict(states)}\n{stack.logs()}"
    return wait_until(all_final, 90, progress, interval=0.25)


def histories(farm: FarmProcess) -> dict[str, list[str]]:
    """Every prompt id the nodes ran, with the nodes that ran it."""
    ran_on: dict[str, list[str]] = collections.defaultdict(list)
    with httpx.Client(timeout=10) as client:
        for url in farm.urls:
            for prompt_id in client.get(f"{url}/history").json():
                ran_on[prompt_id].append(url.split("://", 1)[1])
    return ran_on


def test_workers_share_the_nodes_and_a_dead_workers_share_is_taken_over(
        farm: FarmProcess, tmp_path: pathlib.Path) -> None:
    names = [url.split("://", 1)[1] for url in farm.urls]
    ports = {"w0": free_port(), "w1": free_port(), "w2": free_port()}
    stack = Stack(tmp_path / "stack", nodes=0, workers=0,
                  env={"COMFYUI_URLS": ",".join(farm.urls), "LOG_LEVEL": "INFO"})
    try:
        # Given two workers on one farm of 24 nodes
        stack.start_worker({"WORKER_METRICS_PORT": str(ports["w0"])})
        w1 = stack.start_worker({"WORKER_METRICS_PORT": str(ports["w1"])})
        expected = {w: share(names, ["w0", "w1"], w) for w in ("w0", "w1")}
        assert expected["w0"] and expected["w1"]  # 2**-23 that one is empty

        # Then each links to its own part of the nodes only, and /api/v1/nodes says who
        def settled(workers: tuple[str, ...], want: dict[str, set[str]]) -> bool:
            return all(linked_nodes(ports[w]) == want[w] for w in workers)
        wait_until(lambda: settled(("w0", "w1"), expected), 30,
                   lambda: f"each worker to follow its share\n{stack.logs()}")
        stack.wait_nodes_healthy(NODES, timeout=30)

        def reported_by() -> dict[str, str]:
            return {n["name"]: n["worker"] for n in stack.http.get("/api/v1/nodes").json()["nodes"]}
        # (a node's report comes from its worker's next snapshot, within a second)
        wait_until(lambda: reported_by() == {name: owner(name, ["w0", "w1"]) for name in names},
                   10, lambda: f"/api/v1/nodes to name each node's worker: {reported_by()}")

        # When a backlog arrives (the ready queue is shared), every node gets work
        first = submit_batch(stack, 3 * NODES, steps=2, seed0=0)
        records = wait_final(stack, first)
        assert {(r["status"], r["attempts"]) for r in records} == {("succeeded", 1)}
        assert {r["node"] for r in records} == set(names)
        done = list(records)

        # When w1 is killed while tasks run on its nodes
        second = submit_batch(stack, 2 * NODES, steps=12, seed0=1000)
        wait_until(lambda: any(stack.task(t)["status"] == "running"
                               and stack.task(t)["node"] in expected["w1"] for t in second),
                   30, "a task running on one of w1's nodes")
        w1.kill()

        # Then w0 follows every node, and every task still ends succeeded
        wait_until(lambda: linked_nodes(ports["w0"]) == set(names), 30,
                   lambda: f"w0 to take over w1's nodes\n{stack.logs()}")
        records = wait_final(stack, second)
        assert {r["status"] for r in records} == {"succeeded"}, stack.logs()
        done += records

        # When a new worker joins, it takes its part and w0 lets go of it
        stack.start_worker({"WORKER_METRICS_PORT": str(ports["w2"])})
        expected = {w: share(names, ["w0", "w2"], w) for w in ("w0", "w2")}
        wait_until(lambda: settled(("w0", "w2"), expected), 30,
                   lambda: f"w2 to take its share from w0\n{stack.logs()}")
        third = submit_batch(stack, 2 * NODES, steps=2, seed0=2000)
        records = wait_final(stack, third)
        assert {(r["status"], r["attempts"]) for r in records} == {("succeeded", 1)}
        done += records
    finally:
        stack.stop()

    # And every prompt ran exactly once, on the node its record names
    ran_on = histories(farm)
    assert sorted(ran_on) == sorted(first + second + third)
    assert {str(r["task_id"]): ran_on[str(r["task_id"])] for r in done} == {
        str(r["task_id"]): [r["node"]] for r in done}
