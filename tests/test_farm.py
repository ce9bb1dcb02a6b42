"""A farm of 100 simulated nodes in one process behind the real service: every task runs once,
on the node its record names, and every node gets work."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import FarmProcess, wait_until
from tests.support.service import Stack, txt2img_body

NODES, TASKS, BATCH = 100, 300, 100
# 8 s a task: one worker spends about 30 ms of CPU per task on this 2-core machine
# (docs/benchmarks.md, fleet scale), so it binds the first 100 well before any node is free
# again; shorter tasks let the first nodes take work twice while others still wait.
STEPS, STEP_MS = 4, 2000


@pytest.fixture
def farm(tmp_path: pathlib.Path) -> Iterator[FarmProcess]:
    process = FarmProcess(tmp_path / "farm", NODES, step_ms=STEP_MS)
    try:
        yield process
    finally:
        process.stop()


def test_a_farm_of_100_nodes_runs_every_task_exactly_once(farm: FarmProcess,
                                                          tmp_path: pathlib.Path) -> None:
    # Given the service with one worker and the farm's 100 nodes as its static node list
    stack = Stack(tmp_path / "stack", nodes=0, env={"COMFYUI_URLS": ",".join(farm.urls),
                                                    "LOG_LEVEL": "WARNING"})
    try:
        stack.wait_nodes_healthy(NODES, timeout=60)
        # When 300 small tasks arrive in batches of 100, each with its own seed
        task_ids: list[str] = []
        for first in range(0, TASKS, BATCH):
            answer = stack.http.post("/api/v1/batches", json={"requests": [
                txt2img_body(steps=STEPS, seed=seed) for seed in range(first, first + BATCH)]})
            assert answer.status_code == 202, answer.text
            task_ids += answer.json()["task_ids"]

        def all_final() -> list[dict[str, object]] | None:
            records = [stack.task(task_id) for task_id in task_ids]
            return records if all(r["status"] in ("succeeded", "failed", "cancelled")
                                  for r in records) else None
        records = wait_until(all_final, 90, lambda: f"{TASKS} tasks to finish\n{stack.logs()}",
                             interval=0.5)
    finally:
        stack.stop()
    # Then every task succeeded on its first attempt
    assert [(r["task_id"], r["status"], r["attempts"]) for r in records
            if r["status"] != "succeeded" or r["attempts"] != 1] == [], stack.logs()
    # And each task id is in exactly one node's history: the node its record names
    ran_on: dict[str, list[str]] = collections.defaultdict(list)
    with httpx.Client(timeout=10) as client:
        for url in farm.urls:
            for prompt_id in client.get(f"{url}/history").json():
                ran_on[prompt_id].append(url.split("://", 1)[1])
    assert sorted(ran_on) == sorted(task_ids)
    assert {r["task_id"]: ran_on[str(r["task_id"])] for r in records} == {
        r["task_id"]: [r["node"]] for r in records}
    # And every node got work
    assert len({r["node"] for r in records}) == NODES
