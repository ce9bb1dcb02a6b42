"""Deployment with `nomad job run`, end to end: `MESH=nomad comfy-service up` on real Consul and
Nomad agents runs our job files; tasks flow through it while Nomad stops, restarts, scales.

The tests share one cluster and run in file order (each leaves it with every task finished).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from comfy_service.agents.process import processes_under
from tests.support.nomad_cluster import Cluster, running_cluster
from tests.support.processes import wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory.mktemp("nomad-up"))


def _assert_each_ran_once(records: list[dict[str, Any]]) -> None:
    assert [r["status"] for r in records] == ["succeeded"] * len(records), \
        [(r["task_id"], r["status"], r["error"]) for r in records if r["status"] != "succeeded"]
    assert all(len(r["outputs"]) == 1 for r in records)
    # attempts 1: no task was cut off and run again somewhere else
    assert [r["attempts"] for r in records] == [1] * len(records)


def test_up_prints_every_part_and_the_sidecars_pass(cluster: Cluster) -> None:
    allocs = wait_until(lambda: cluster.settled(2), 60, "two node allocations passing")
    assert len({a["node"] for a in allocs}) == 2
    assert cluster.get(f"{cluster.gateway}/healthz")


def test_fifty_tasks_through_the_gateway_all_succeed_with_one_output(cluster: Cluster) -> None:
    ids = cluster.submit(50, steps=4)
    _assert_each_ran_once(cluster.finish(ids))
    first = cluster.task(ids[0])
    png = httpx.get(f"{cluster.gateway}{first['outputs'][0]['url']}", timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def _busy_nodes(cluster: Cluster, ids: list[str]) -> set[str]:
    return {r["node"] for r in (cluster.task(i) for i in ids) if r["status"] == "running"}


def test_alloc_stop_mid_run_loses_nothing_and_nomad_replaces_the_node(cluster: Cluster) -> None:
    # Given two passing nodes, each running work
    allocs = wait_until(lambda: cluster.settled(2), 60, "two node allocations passing")
    victim = allocs[0]
    ids = cluster.submit(10)
    wait_until(lambda: victim["node"] in _busy_nodes(cluster, ids), 60,
               f"a task running on {victim['node']}")
    # When Nomad stops that node's allocation mid-run
    cluster.cli("alloc", "stop", "-detach", victim["ID"])
    # Then every task still succeeds exactly once, none cut off (the node drained first)
    records = cluster.finish(ids)
    _assert_each_ran_once(records)
    assert victim["node"] in {r["node"] for r in records}
    # And Nomad replaces the allocation; the new node passes and takes work
    allocs = wait_until(lambda: (found := cluster.settled(2)) and
                        victim["ID"] not in {a["ID"] for a in found} and found,
                        120, "a replacement allocation passing")
    new_nodes = {a["node"] for a in allocs} - {a["node"] for a in [victim]}
    more = cluster.submit(8)
    _assert_each_ran_once(ran := cluster.finish(more))
    assert new_nodes & {r["node"] for r in ran}, "the replacement took no work"


def _sim_pids(port: int, root: pathlib.Path | None = None) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"comfyui_sim" in argv and str(port).encode() in argv:
            pids.append(int(entry.name))
    return pids


def test_a_killed_comfyui_is_restarted_by_nomad_and_passes_again(cluster: Cluster) -> None:
    # Given a passing node
    alloc = wait_until(lambda: cluster.settled(2), 60, "two node allocations passing")[0]
    (pid,) = wait_until(lambda: _sim_pids(alloc["port"]), 10, "the simulator's process")
    # When its ComfyUI process is SIGKILLed
    os.kill(pid, signal.SIGKILL)

    # Then Nomad restarts the task in the same allocation, and the node passes again
    def restarted() -> bool:
        state = cluster.get(f"{cluster.nomad}/v1/allocation/{alloc['ID']}")["TaskStates"]
        return bool(state["comfyui"]["Restarts"] >= 1 and state["comfyui"]["State"] == "running")
    wait_until(restarted, 60, "Nomad to restart the ComfyUI task")
    wait_until(lambda: (pids := _sim_pids(alloc["port"])) and pid not in pids, 30, "a new process")
    wait_until(lambda: alloc["node"] in cluster.passing(), 60, "the node passing again")
    ids = cluster.submit(8)
    _assert_each_ran_once(records := cluster.finish(ids))
    assert alloc["node"] in {r["node"] for r in records}


def test_scale_out_to_three_nodes_the_new_one_takes_work(cluster: Cluster) -> None:
    before = {a["node"] for a in wait_until(lambda: cluster.settled(2), 60, "two nodes")}
    wait_until(cluster.deployed, 60, "the replacement's deployment to finish")
    cluster.cli("job", "scale", "-detach", "comfyui", "gpu", "3")
    allocs = wait_until(lambda: cluster.settled(3), 120, "three node allocations passing")
    (new_node,) = {a["node"] for a in allocs} - before
    ids = cluster.submit(12)
    _assert_each_ran_once(records := cluster.finish(ids))
    assert new_node in {r["node"] for r in records}


def test_scale_in_while_every_node_is_busy_interrupts_no_prompt(cluster: Cluster) -> None:
    # Given three nodes, each running a prompt with another waiting in its queue
    allocs = wait_until(lambda: cluster.settled(3), 60, "three node allocations passing")
    ids = cluster.submit(12, steps=40)
    wait_until(lambda: _busy_nodes(cluster, ids) == {a["node"] for a in allocs}, 60,
               "every node running a task")
    # When the group is scaled in to two (once the scale-out's deployment is over)
    wait_until(cluster.deployed, 60, "the scale-out deployment to finish")
    cluster.cli("job", "scale", "-detach", "comfyui", "gpu", "2")
    # Then no prompt is interrupted: every task succeeds on its first attempt
    records = cluster.finish(ids, timeout=240)
    _assert_each_ran_once(records)
    remaining = wait_until(lambda: cluster.settled(2), 120, "two node allocations passing")
    removed = {a["node"] for a in allocs} - {a["node"] for a in remaining}
    assert len(removed) == 1
    assert removed & {r["node"] for r in records}, "the removed node ran nothing to finish"
    # And its sidecar deregistered: Consul lists only the two that remain
    assert not removed & cluster.passing()
    # And Nomad stops its ComfyUI once the sidecar (the group's leader) has drained
    (port,) = [a["port"] for a in allocs if a["node"] in removed]
    wait_until(lambda: not _sim_pids(port), 60, "the removed node's ComfyUI to stop")


def test_ctrl_c_stops_the_jobs_and_the_agents(cluster: Cluster) -> None:
    (nomad_dir,) = re.findall(r"log (/\S+)/nomad\.log", cluster.banner)
    cluster.proc.send_signal(signal.SIGINT)
    assert cluster.proc.wait(180) == 0
    # Every task process Nomad ran (simulators, sidecars, gateway, worker) is gone with it
    assert not processes_under(pathlib.Path(nomad_dir))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cluster.nomad}/v1/status/leader", timeout=2)
