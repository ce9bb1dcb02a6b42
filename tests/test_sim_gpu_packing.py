"""Simulated nodes that share a virtual GPU (--gpu-id) slow each other as ComfyUI processes on
one GPU do: real simulator processes, step times as their WebSocket progress shows them."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from comfyui_sim import packing
from tests.agents_fixtures import ConsulAgent, consul_agent  # noqa: F401  (fixture)
from tests.support.comfy_client import run_prompt, txt2img
from tests.support.mesh import Mesh
from tests.support.processes import SimNodeProcess, wait_until
from tests.support.service import txt2img_body

STEP_MS = 60
TOLERANCE = 0.12  # relative, on ratios of step times measured in one run


def graph(size: int, steps: int, seed: int) -> dict[str, Any]:
    return txt2img(steps=steps, width=size, height=size, seed=seed)


def sharing_sims(root: pathlib.Path, count: int) -> list[SimNodeProcess]:
    sims: list[SimNodeProcess] = []
    try:
        for i in range(count):
            sims.append(SimNodeProcess(root / f"sim{i}", "--gpu-id", "GPU-0", "--gpu-dir",
                                       str(root / "gpus"), step_ms=STEP_MS))
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims


def sampling_on_gpu(sim: SimNodeProcess) -> int:
    return int(httpx.get(f"{sim.url}/sim/info", timeout=5).json()["gpu_sampling"])


async def _progress_times(url: str, prompt: dict[str, Any], stamps: list[float]) -> None:
    async def on_message(client: Any, run: Any, message: dict[str, Any]) -> None:
        if message["type"] == "progress":
            stamps.append(time.monotonic())
    run = await run_prompt(url, prompt, timeout=60, on_message=on_message)
    assert run.terminal == "execution_success"


def step_times_at_once(sims: list[SimNodeProcess], size: int, steps: int, seed: int,
                       ) -> list[float]:
    """Each node's mean step time while all of them sample at once (each runs one prompt):
    only steps that end inside the window where every node is sampling count."""
    stamps: list[list[float]] = [[] for _ in sims]

    async def all_at_once() -> None:
        await asyncio.gather(*(_progress_times(sim.url, graph(size, steps, seed + i), stamps[i])
                               for i, sim in enumerate(sims)))
    asyncio.run(all_at_once())
    start, end = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    times = []
    for node in stamps:
        inside = [t for t in node if start <= t <= end]
        assert len(inside) >= 6, f"too few steps overlap: {stamps}"
        times.append((inside[-1] - inside[0]) / (len(inside) - 1))
    return times


@pytest.fixture(scope="module")
def three_on_one_gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimNodeProcess]]:
    sims = sharing_sims(tmp_path_factory.mktemp("packing"), 3)
    yield sims
    for sim in sims:
        sim.stop()


@pytest.mark.parametrize("size", [1024, 512])
def test_nodes_sampling_on_one_gpu_add_throughput_as_measured_on_an_h100(
        three_on_one_gpu: list[SimNodeProcess], size: int) -> None:
    # Given one node sampling alone on the GPU: its solo step time
    solo = step_times_at_once(three_on_one_gpu[:1], size, 24, seed=size)[0]
    for k in (2, 3):
        # When k nodes on the same GPU each sample a prompt at once
        times = step_times_at_once(three_on_one_gpu[:k], size, 24, seed=size + 10 * k)
        # Then each steps k / speedup(k) slower, so together they make speedup(k) as many
        # images per second as one node alone (1.19x/1.3x at 1024 px, 1.22x/1.5x at 512 px)
        expected = packing.speedup(k, size * size)
        measured = sum(solo / t for t in times)
        assert measured == pytest.approx(expected, rel=TOLERANCE), (k, solo, times)
        for t in times:
            assert t / solo == pytest.approx(k / expected, rel=TOLERANCE), (k, solo, times)


def test_a_sigkilled_sharer_stops_slowing_the_others(tmp_path: pathlib.Path) -> None:
    survivor, victim = sims = sharing_sims(tmp_path, 2)
    try:
        stamps: list[float] = []

        async def scenario() -> tuple[float, float]:
            # Given both nodes sampling 1024 px prompts on the same GPU
            survive = asyncio.create_task(_progress_times(
                survivor.url, graph(1024, 70, seed=1), stamps))
            doomed = asyncio.create_task(_progress_times(victim.url, graph(1024, 500, 2), []))
            await asyncio.to_thread(wait_until, lambda: sampling_on_gpu(survivor) == 2, 20,
                                    "both nodes sampling")
            both = time.monotonic()
            await asyncio.to_thread(wait_until, lambda: sum(t > both for t in stamps) >= 10, 30,
                                    "shared steps")
            # When one of them is SIGKILLed mid-prompt
            killed = time.monotonic()
            await asyncio.to_thread(victim.kill)
            # Then it stops counting as a sampler on the GPU at once (the kernel drops its lock)
            await asyncio.to_thread(wait_until, lambda: sampling_on_gpu(survivor) == 1, 1,
                                    "the killed node to stop counting")
            await survive
            doomed.cancel()
            await asyncio.gather(doomed, return_exceptions=True)
            return both, killed
        both, killed = asyncio.run(scenario())
        assert sampling_on_gpu(survivor) == 0
        # And the survivor's steps speed up from 2/1.19 of a solo step to a solo step
        # (the first step ending after each moment was under way before it: mixed, left out)
        shared = [t for t in stamps if both < t < killed][1:]
        alone = [t for t in stamps if t > killed][1:]
        shared_step = (shared[-1] - shared[0]) / (len(shared) - 1)
        alone_step = (alone[-1] - alone[0]) / (len(alone) - 1)
        assert shared_step / alone_step == pytest.approx(2 / 1.19, rel=TOLERANCE)
        assert alone_step == pytest.approx(STEP_MS / 1000, rel=0.25)
    finally:
        for sim in sims:
            sim.stop()


def test_the_dispatcher_spreads_tasks_across_gpus_before_stacking_them(
        tmp_path: pathlib.Path, consul_agent: ConsulAgent) -> None:  # noqa: F811
    # Given 2 GPUs with 2 idle nodes each, node0 and node1 on GPU-0 (so the name tie-break
    # alone would put two tasks on GPU-0), each sidecar reporting its GPU uuid to Consul
    gpus = ["GPU-0", "GPU-0", "GPU-1", "GPU-1"]
    mesh = Mesh(tmp_path / "mesh", consul_agent.url, nodes=4, step_ms=STEP_MS, gpus=gpus)
    try:
        # When 2 tasks are submitted at once
        ids = [mesh.stack.submit(txt2img_body(steps=30, seed=seed)) for seed in (1, 2)]
        running = [mesh.stack.wait_task(t, ("running", "succeeded")) for t in ids]
        # Then they run on different GPUs
        assert {gpus[mesh.node_of(task)] for task in running} == {"GPU-0", "GPU-1"}
        assert all(mesh.stack.wait_task(t)["status"] == "succeeded" for t in ids)
    finally:
        mesh.stop()
