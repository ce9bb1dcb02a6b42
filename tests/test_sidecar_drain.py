"""The sidecar's drain on SIGTERM against a real Consul and a simulated ComfyUI: out of dispatch
at once, running prompt finished, a busy ComfyUI's slow answer not taken for its end."""

from __future__ import annotations

import pathlib
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.agents_fixtures import ConsulAgent, consul_agent  # noqa: F401 - fixture
from tests.support.mesh import Sidecar
from tests.support.processes import SimNodeProcess, wait_until
from tests.support.service import txt2img_body


@pytest.fixture
def node(tmp_path: pathlib.Path, consul_agent: ConsulAgent  # noqa: F811
         ) -> Iterator[tuple[SimNodeProcess, Sidecar, str]]:
    sim = SimNodeProcess(tmp_path / "sim", step_ms=100)
    wait_until(lambda: httpx.get(f"{sim.url}/queue", timeout=1).status_code == 200, 20,
               "the simulator", transient=lambda exc: isinstance(exc, httpx.HTTPError))
    service = f"drain-{uuid.uuid4().hex[:6]}"
    sidecar = Sidecar(tmp_path, sim, consul_agent.url, service, "drainer", gpu_util=0.0,
                      gpu_uuid="GPU-DRAIN")
    try:
        yield sim, sidecar, service
    finally:
        sidecar.proc.stop()
        sim.stop()


def _entries(consul: ConsulAgent, service: str) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{consul.url}/v1/health/service/{service}",
                                             timeout=5).json()
    return answer


def _in_maintenance(entries: list[dict[str, Any]]) -> bool:
    return any(check["CheckID"].startswith("_service_maintenance:") and
               check["Status"] == "critical" for entry in entries for check in entry["Checks"])


def test_a_sigterm_drains_through_a_slow_comfyui_before_deregistering(
        node: tuple[SimNodeProcess, Sidecar, str], consul_agent: ConsulAgent  # noqa: F811
        ) -> None:
    sim, sidecar, name = node
    wait_until(lambda: _entries(consul_agent, name) and not _in_maintenance(
        _entries(consul_agent, name)), 30, "the node registered and passing")
    # Given a prompt running on the node (40 steps of 100 ms)
    prompt_id = str(uuid.uuid4())
    graph = _graph()
    assert httpx.post(f"{sim.url}/prompt", json={"prompt": graph, "prompt_id": prompt_id},
                      timeout=10).status_code == 200
    wait_until(lambda: httpx.get(f"{sim.url}/queue", timeout=5).json()["queue_running"], 10,
               "the prompt to run")
    # When the sidecar is told to stop, and ComfyUI then answers nothing for a while
    sidecar.proc.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _in_maintenance(_entries(consul_agent, name)), 10,
               "the node in maintenance (out of dispatch)")
    httpx.post(f"{sim.url}/sim/faults", json={"hang": True}, timeout=5).raise_for_status()
    wait_until(lambda: "sidecar.probe_failed" in sidecar.proc.log_path.read_text(), 20,
               "a probe to fail while ComfyUI hangs")
    # Then the sidecar keeps waiting: still running, the node still registered
    assert sidecar.proc.alive() and _entries(consul_agent, name)
    httpx.post(f"{sim.url}/sim/faults", json={"hang": False}, timeout=5).raise_for_status()
    # And it leaves only once the prompt has finished
    wait_until(lambda: not sidecar.proc.alive(), 60, "the sidecar to exit after the drain")
    assert sidecar.proc.proc.returncode == 0
    history = httpx.get(f"{sim.url}/history/{prompt_id}", timeout=5).json()
    assert history[prompt_id]["status"]["status_str"] == "success"
    assert not _entries(consul_agent, name)
    log = sidecar.proc.log_path.read_text()
    assert '"queue_empty": true' in log


def _graph() -> dict[str, Any]:
    from comfy_service.templates import load_templates, render, resolve
    template = load_templates()["txt2img"]
    values, errors = resolve(template, txt2img_body(steps=40)["params"], lambda limit: 1)
    assert not errors
    return render(template, values, output_prefix="drain")
