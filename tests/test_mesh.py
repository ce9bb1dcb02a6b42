"""The mesh with a real Consul agent: sidecars register, the dispatcher follows Consul."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agents_fixtures import (  # noqa: F401  (fixtures)
    ConsulAgent,
    consul_agent,
    consul_agent_factory,
)
from tests.support.mesh import Mesh
from tests.support.processes import SimNodeProcess, wait_until
from tests.support.service import slow_body, txt2img_body


@pytest.fixture()
def mesh_factory(tmp_path: pathlib.Path, consul_agent: ConsulAgent,  # noqa: F811
                 ) -> Iterator[Any]:
    meshes: list[Mesh] = []

    def make(**kwargs: Any) -> Mesh:
        mesh = Mesh(tmp_path / f"mesh{len(meshes)}", consul_agent.url, **kwargs)
        meshes.append(mesh)
        return mesh
    yield make
    for mesh in meshes:
        mesh.stop()


def test_sidecars_register_with_gpu_meta_and_deregister(mesh_factory: Any) -> None:
    mesh = mesh_factory(nodes=2, gpu_utils=[35.0, 60.0])
    entries = {e["Service"]["ID"]: e for e in mesh.wait_passing(2)}
    service = entries[next(i for i in entries if "node0" in i)]["Service"]
    assert service["Port"] == mesh.stack.sims[0].port
    assert service["Meta"]["gpu_util"] == "35" and service["Meta"]["gpu_uuid"] == "GPU-0"
    assert service["Meta"]["vram_total_mb"] == "81559" and service["Meta"]["slots"] == "2"
    assert "comfyui" in service["Tags"] and "gpu-nvidia-h100-80gb-hbm3" in service["Tags"]
    checks = {c["CheckID"]: c["Status"] for c in entries[service["ID"]]["Checks"]}
    assert checks[f"{service['ID']}:alive"] == "passing"
    assert checks[f"{service['ID']}:http"] == "passing"
    # When a sidecar's GPU load changes, its Meta follows
    mesh.sidecars[0].set_gpu(90.0, "GPU-0")
    wait_until(lambda: any(e["Service"]["Meta"]["gpu_util"] == "90" for e in mesh.passing()),
               15, "the new GPU load in Consul")
    # When a sidecar stops, its node leaves Consul
    mesh.sidecars[1].proc.stop()
    wait_until(lambda: len(mesh.passing()) == 1, 15, "the stopped sidecar to deregister")


def test_work_goes_to_the_node_with_the_lowest_gpu_load(mesh_factory: Any) -> None:
    mesh = mesh_factory(nodes=3, gpu_utils=[80.0, 5.0, 60.0])
    for seed in range(3):
        task = mesh.stack.wait_task(mesh.stack.submit(txt2img_body(steps=1, seed=seed)))
        assert task["status"] == "succeeded" and mesh.node_of(task) == 1


def test_a_hung_node_turns_critical_and_its_task_finishes_elsewhere(mesh_factory: Any) -> None:
    mesh = mesh_factory(nodes=2, step_ms=50, gpu_utils=[5.0, 50.0])
    task_id = mesh.stack.submit(slow_body(100))
    first = mesh.stack.wait_task(task_id, ("running",))
    hung = mesh.stack.sims[mesh.node_of(first)]
    # When its ComfyUI hangs (port open, no answers)
    httpx.post(f"{hung.url}/sim/faults", json={"hang": True}).raise_for_status()
    # Then Consul marks it critical, and the task is re-run on the other node
    mesh.wait_passing(1)
    task = mesh.stack.wait_task(task_id, timeout=60)
    assert task["status"] == "succeeded", (task, mesh.stack.logs())
    assert task["attempts"] == 2 and mesh.node_of(task) != mesh.node_of(first)
    assert len(task["outputs"]) == 1
    httpx.post(f"{hung.url}/sim/faults", json={"hang": False}, timeout=5)


def test_a_node_that_comes_back_receives_work(mesh_factory: Any) -> None:
    mesh = mesh_factory(nodes=2, gpu_utils=[5.0, 70.0])
    # Given node 0 (the least loaded) killed: only node 1 stays
    port = mesh.stack.sims[0].port
    mesh.stack.sims[0].kill()
    mesh.wait_passing(1)
    assert mesh.node_of(mesh.stack.wait_task(mesh.stack.submit(txt2img_body(steps=1)))) == 1
    # When it comes back on the same address
    mesh.stack.sims[0] = SimNodeProcess(mesh.stack.root / "sim0-again", port=port, step_ms=20)
    mesh.wait_passing(2)
    mesh.stack.wait_nodes_healthy(2)
    # Then it takes work again
    task = mesh.stack.wait_task(mesh.stack.submit(txt2img_body(steps=1, seed=5)))
    assert task["status"] == "succeeded" and mesh.node_of(task) == 0


def test_dispatch_goes_on_while_consul_is_down_and_follows_it_once_back(
        tmp_path: pathlib.Path, consul_agent_factory: Any) -> None:  # noqa: F811
    consul = consul_agent_factory(persistent=True)
    mesh = Mesh(tmp_path / "mesh", consul.url, nodes=2, gpu_utils=[20.0, 40.0])
    try:
        # Given a task running on a node the worker learnt of from Consul
        before = mesh.stack.submit(slow_body(150))
        mesh.stack.wait_task(before, ("running",))
        worker_log = mesh.stack.workers[0].log_path
        log_offset = worker_log.stat().st_size
        # When the Consul agent stops, and the worker has found it unreachable
        consul.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{consul.url}/v1/status/leader", timeout=5)
        wait_until(lambda: "discovery.consul_unreachable" in
                   worker_log.read_bytes()[log_offset:].decode(errors="replace"),
                   60, "the worker to log that Consul is unreachable")
        # Then tasks submitted while it is down are bound and succeed, on the last good view
        during = [mesh.stack.submit(txt2img_body(steps=1, seed=i)) for i in range(3)]
        for task_id in [before, *during]:
            task = mesh.stack.wait_task(task_id, timeout=120)
            assert task["status"] == "succeeded", (task, mesh.stack.logs())
            assert task["node"] is not None
        assert not consul.running  # all of the above happened with Consul down
        # When Consul comes back and a new, least loaded node registers with it
        consul.start()
        mesh.wait_passing(2, timeout=60)
        new = mesh.add_node(gpu_util=1.0)
        mesh.wait_passing(3, timeout=60)
        # Then the worker has subscribed again: it sees the new node and sends it work
        mesh.stack.wait_nodes_healthy(3, timeout=120)
        task = mesh.stack.wait_task(mesh.stack.submit(txt2img_body(steps=1, seed=9)),
                                    timeout=120)
        assert task["status"] == "succeeded" and mesh.node_of(task) == new, task
    finally:
        mesh.stop()


def test_a_killed_node_loses_nothing_and_duplicates_nothing(mesh_factory: Any) -> None:
    mesh = mesh_factory(nodes=2, step_ms=30)
    # Given six tasks spread over both nodes, some running, some waiting
    ids = [mesh.stack.submit(txt2img_body(steps=40, seed=i)) for i in range(6)]
    wait_until(lambda: sum(mesh.stack.task(t)["status"] == "running" for t in ids) == 2, 30,
               "both nodes to be running a task")
    # When one node dies
    mesh.stack.sims[0].kill()
    # Then every task still succeeds exactly once, with one output each, on the survivor
    tasks = [mesh.stack.wait_task(t, timeout=90) for t in ids]
    assert all(t["status"] == "succeeded" for t in tasks), [t["status"] for t in tasks]
    assert all(len(t["outputs"]) == 1 for t in tasks)
    moved = [t for t in tasks if t["attempts"] == 2]
    assert moved and all(mesh.node_of(t) == 1 for t in moved)
    history = httpx.get(f"{mesh.stack.sims[1].url}/history", timeout=5).json()
    assert sorted(history) == sorted(t["task_id"] for t in tasks if mesh.node_of(t) == 1)
