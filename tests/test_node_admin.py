"""Operators' cordon, drain and uncordon through the API, with a real Consul, real sidecars and
simulated nodes: the wish goes to Consul KV, the sidecar turns it into service maintenance, and
the workers act on what Consul says (comfy_service/availability.py)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agents_fixtures import ConsulAgent, consul_agent  # noqa: F401  (fixture)
from tests.support.mesh import Mesh
from tests.support.processes import wait_until
from tests.support.service import slow_body

USER_KEY, ADMIN_KEY = "user-key-0123456789", "admin-key-0123456789"
STEP_MS = 50
SLOW_STEPS = 40  # 2 s on a node: long enough to act while it runs


@pytest.fixture()
def mesh(tmp_path: pathlib.Path, consul_agent: ConsulAgent,  # noqa: F811
         ) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, consul_agent.url, nodes=2, step_ms=STEP_MS,
                env={"API_KEYS": USER_KEY, "ADMIN_API_KEYS": ADMIN_KEY})
    try:
        yield mesh
    finally:
        mesh.stop()


def _names(mesh: Mesh) -> list[str]:
    """Node ids (Consul service ids) in sim order."""
    nodes = mesh.stack.http.get("/api/v1/nodes").json()["nodes"]
    by_port = {int(n["name"].rsplit("-", 1)[1]): n["name"] for n in nodes}
    return [by_port[sim.port] for sim in mesh.stack.sims]


def _act(mesh: Mesh, node: str, action: str, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}
    return mesh.stack.http.post(f"/api/v1/nodes/{node}/{action}", headers=headers)


def _seen_as(mesh: Mesh, node: str, state: str, timeout: float = 20) -> None:
    """Wait until the workers report `node` in `state` (they read it from Consul)."""
    def reached() -> bool:
        nodes = mesh.stack.http.get("/api/v1/nodes").json()["nodes"]
        return any(n["name"] == node and n.get("availability") == state for n in nodes)
    wait_until(reached, timeout, f"{node} {state} as the workers see it")


def _set(mesh: Mesh, node: str, action: str, state: str) -> None:
    answer = _act(mesh, node, action)
    assert answer.status_code == 202, answer.text
    assert answer.json()["node"] == node and answer.json()["requested"] == state
    _seen_as(mesh, node, state)


def _history(mesh: Mesh, index: int) -> set[str]:
    ran: dict[str, Any] = httpx.get(f"{mesh.stack.sims[index].url}/history", timeout=5).json()
    return set(ran)


def _maintenance_notes(mesh: Mesh, node: str) -> list[str]:
    entries = httpx.get(f"{mesh.consul_url}/v1/health/service/{mesh.service}",
                        timeout=5).json()
    return [check.get("Notes", "") for entry in entries if entry["Service"]["ID"] == node
            for check in entry["Checks"] if check["CheckID"].startswith("_service_maintenance:")]


def test_node_controls_need_an_admin_key_and_a_known_node(mesh: Mesh) -> None:
    node = _names(mesh)[0]
    # (the listing shows what each node's sidecar reports of its GPU)
    listed = {n["name"]: n for n in mesh.stack.http.get("/api/v1/nodes").json()["nodes"]}
    assert listed[node]["gpu"]["uuid"] == "GPU-0" and listed[node]["gpu"]["util_pct"] == 10.0
    refused = _act(mesh, node, "cordon", USER_KEY)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
    assert _act(mesh, node, "cordon", None).status_code == 401
    unknown = _act(mesh, "comfyui-nowhere-gpu0-1", "drain")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "node_not_found"
    bad = _act(mesh, node, "explode")
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "not_found"
    # Nothing was changed by any of those
    assert _maintenance_notes(mesh, node) == []


def test_a_cordoned_node_takes_nothing_new_finishes_what_it_holds_and_survives_restarts(
        mesh: Mesh) -> None:
    first, second = _names(mesh)
    _set(mesh, second, "cordon", "cordoned")
    assert _maintenance_notes(mesh, second)[0].startswith("comfy-service cordoned:")
    # Given three tasks while the second node is cordoned: the first node holds two of them
    # (one running, one waiting in its ComfyUI queue), the third waits in line
    ids = [mesh.stack.submit(slow_body(SLOW_STEPS)) for _ in range(3)]
    mesh.stack.wait_task(ids[0], ("running",))
    wait_until(lambda: mesh.stack.task(ids[1])["node"] == first, 10, "the second task bound")
    # When the first node is cordoned too, and the second uncordoned
    _set(mesh, first, "cordon", "cordoned")
    _set(mesh, second, "uncordon", "ready")
    # Then what the first node held finishes there (cordon moves nothing), the rest runs on
    # the second node, every task once
    done = [mesh.stack.wait_task(task_id, timeout=60) for task_id in ids]
    assert [t["status"] for t in done] == ["succeeded"] * 3
    assert [mesh.node_of(t) for t in done] == [0, 0, 1]
    assert all(t["attempts"] == 1 for t in done)
    assert _history(mesh, 0) == set(ids[:2]) and _history(mesh, 1) == {ids[2]}
    # And the state lives in Consul, not in a worker: a new worker keeps off the cordoned node
    mesh.stack.workers[0].stop()
    mesh.stack.start_worker()
    _seen_as(mesh, first, "cordoned")
    late = mesh.stack.wait_task(mesh.stack.submit(slow_body(2)), timeout=60)
    assert late["status"] == "succeeded" and mesh.node_of(late) == 1


def test_a_drain_finishes_the_running_prompt_and_moves_the_waiting_one(mesh: Mesh) -> None:
    first, second = _names(mesh)
    _set(mesh, second, "cordon", "cordoned")
    # Given the first node running one prompt with another waiting in its ComfyUI queue
    running, waiting = (mesh.stack.submit(slow_body(SLOW_STEPS)) for _ in range(2))
    mesh.stack.wait_task(running, ("running",))
    wait_until(lambda: mesh.stack.task(waiting)["node"] == first, 10, "the second task bound")
    queue = httpx.get(f"{mesh.stack.sims[0].url}/queue", timeout=5).json()
    assert [item[1] for item in queue["queue_pending"]] == [waiting]
    # When the second node is back and the first drains
    _set(mesh, second, "uncordon", "ready")
    _set(mesh, first, "drain", "draining")
    assert _maintenance_notes(mesh, first)[0].startswith("comfy-service draining:")
    # Then the waiting prompt leaves the first node at once and runs on the second, while the
    # running one finishes where it was: nothing interrupted, nothing run twice, no attempt spent
    moved = mesh.stack.wait_task(waiting, timeout=60)
    kept = mesh.stack.wait_task(running, timeout=60)
    assert (kept["status"], mesh.node_of(kept), kept["attempts"]) == ("succeeded", 0, 1)
    assert (moved["status"], mesh.node_of(moved), moved["attempts"]) == ("succeeded", 1, 1)
    assert _history(mesh, 0) == {running} and _history(mesh, 1) == {waiting}
    assert '"task.moved_back"' in mesh.stack.logs()
    # And an uncordoned node takes work again
    _set(mesh, first, "uncordon", "ready")
    assert _maintenance_notes(mesh, first) == []
