"""`make bench BENCH=packing`: several simulated ComfyUI processes per GPU, through the service.

Simulated nodes started with the same --gpu-id share one virtual GPU and slow each other as
ComfyUI processes on one H100 did (comfyui_sim.packing). For 2 virtual GPUs with 1, 2 and 3
nodes each, a batch of 1024 px txt2img tasks goes through the real service (gateway, one
worker, Redis, Consul sidecars that report each node's GPU uuid, which the dispatcher reads):
the makespan, its speedup over one node per GPU, and what the simulator's calibration alone
predicts. Then where the dispatcher puts 2 tasks given 2 GPUs x 2 nodes: on different GPUs, or
stacked on one. Prints Markdown rows.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections import Counter
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfyui_sim import packing  # noqa: E402
from tests.support.mesh import Mesh  # noqa: E402
from tests.support.service import txt2img_body  # noqa: E402

GPUS, TASKS, STEPS, STEP_MS, SIZE = 2, 36, 20, 50, 1024
SPREAD_TRIALS = 5
# Real ComfyUI on one H100, SDXL 1024 px, 30 steps (2026-11-22): images/s by processes per GPU.
H100_SDXL = {1: "0.456 /s", 2: "0.543 /s (1.19x)", 3: "about 1.3x"}

HEADER = (f"| GPU packing: {GPUS} virtual GPUs, {TASKS} tasks of {SIZE} px x {STEPS} steps "
          f"({STEP_MS} ms a step alone) | makespan | throughput | speedup over 1 per GPU | "
          f"calibration (ideal makespan) | H100, SDXL 1024 px |\n"
          "| --- | --- | --- | --- | --- | --- |")


def _consul(root: pathlib.Path) -> Any:
    from comfy_service.agents.binaries import agent_binary
    from comfy_service.agents.consul_agent import ConsulAgent
    agent = ConsulAgent(agent_binary("consul"), root / "consul")
    agent.start()
    return agent


def _gpus(per_gpu: int, gpus: int = GPUS) -> list[str]:
    """node0..node<per_gpu-1> on GPU-0, the next ones on GPU-1, ..."""
    return [f"GPU-{g}" for g in range(gpus) for _ in range(per_gpu)]


def _body(seed: int, steps: int = STEPS) -> dict[str, Any]:
    return txt2img_body(steps=steps, width=SIZE, height=SIZE, seed=seed)


def makespan(root: pathlib.Path, consul_url: str, per_gpu: int) -> tuple[float, Counter[str]]:
    """Seconds from the first submit to the last task done, and tasks per GPU."""
    gpus = _gpus(per_gpu)
    mesh = Mesh(root / f"packing{per_gpu}", consul_url, nodes=len(gpus), step_ms=STEP_MS,
                gpus=gpus, env={"LOG_LEVEL": "WARNING"})
    try:
        started = time.perf_counter()
        ids = [mesh.stack.submit(_body(1000 * per_gpu + i)) for i in range(TASKS)]
        done = [mesh.stack.wait_task(t, timeout=600) for t in ids]
        wall = time.perf_counter() - started
    finally:
        mesh.stop()
    failed = [t for t in done if t["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} tasks did not succeed: {failed[0]}")
    return wall, Counter(gpus[mesh.node_of(t)] for t in done)


def spread(root: pathlib.Path, consul_url: str, trials: int = SPREAD_TRIALS) -> list[bool]:
    """Per trial: did 2 tasks submitted at once, given 2 GPUs x 2 idle nodes, run on
    different GPUs? (node0 and node1 share GPU-0: the name tie-break alone would stack them.)"""
    gpus = _gpus(2)
    mesh = Mesh(root / "spread", consul_url, nodes=len(gpus), step_ms=STEP_MS, gpus=gpus,
                env={"LOG_LEVEL": "WARNING"})
    outcomes = []
    try:
        for trial in range(trials):
            ids = [mesh.stack.submit(_body(10 * trial + i, steps=30)) for i in range(2)]
            running = [mesh.stack.wait_task(t, ("running", "succeeded")) for t in ids]
            outcomes.append(len({gpus[mesh.node_of(t)] for t in running}) == 2)
            for task_id in ids:
                mesh.stack.wait_task(task_id)
    finally:
        mesh.stop()
    return outcomes


def bench_packing(root: pathlib.Path) -> list[str]:
    consul = _consul(root)
    rows = []
    try:
        solo_wall = 0.0
        for per_gpu in (1, 2, 3):
            wall, per_gpu_tasks = makespan(root, consul.url, per_gpu)
            solo_wall = solo_wall or wall
            calibrated = packing.speedup(per_gpu, SIZE * SIZE)
            ideal = TASKS * STEPS * STEP_MS / 1000 / (GPUS * calibrated)
            rows.append(
                f"| {per_gpu} simulated node(s) per GPU ({GPUS * per_gpu} nodes; tasks per GPU "
                f"{sorted(per_gpu_tasks.values())}) | {wall:.2f} s | {TASKS / wall:.2f} tasks/s | "
                f"{solo_wall / wall:.2f}x | {calibrated:.2f}x ({ideal:.2f} s) | "
                f"{H100_SDXL[per_gpu]} |")
        outcomes = spread(root, consul.url)
        rows.append(f"\n| spreading before stacking | outcome |\n| --- | --- |\n"
                    f"| 2 tasks at once on {GPUS} GPUs x 2 idle nodes (node0, node1 on GPU-0) | "
                    f"on different GPUs in {sum(outcomes)} of {len(outcomes)} trials |")
    finally:
        consul.stop()
    return rows


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory(prefix="cs-bench-packing-") as tmp:
        print(HEADER)
        print("\n".join(bench_packing(pathlib.Path(tmp))), flush=True)
