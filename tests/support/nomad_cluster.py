"""A local cluster deployed with `nomad job run` (`MESH=nomad comfy-service up`), for tests:
real Consul and Nomad agents running our job files, two simulated GPU nodes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from comfy_service.agents.binaries import agent_binary
from comfy_service.agents.process import free_ports
from tests.support.processes import ROOT, read_until_up, wait_until

STEP_MS = 50      # simulated sampling step: a 20-step task runs about 1 s
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Cluster:
    proc: subprocess.Popen[str]
    gateway: str
    consul: str
    nomad: str
    nomad_bin: str
    banner: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOMAD_")}
        done = subprocess.run([self.nomad_bin, *args], env={**env, "NOMAD_ADDR": self.nomad},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"nomad {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def get(self, url: str, **params: Any) -> Any:
        answer = httpx.get(url, params=params, timeout=10)
        answer.raise_for_status()
        return answer.json()

    # --- Nomad's view
    def allocs(self, stopping: bool = False) -> list[dict[str, Any]]:
        """Running allocations of the node group, with the service id each one's sidecar uses;
        `stopping` adds those Nomad is stopping that still run (draining)."""
        found = []
        for stub in self.get(f"{self.nomad}/v1/job/comfyui/allocations"):
            if stub["ClientStatus"] != "running" or (stub["DesiredStatus"] != "run"
                                                     and not stopping):
                continue
            alloc = self.get(f"{self.nomad}/v1/allocation/{stub['ID']}")
            ports = {p["Label"]: p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
            alloc["node"] = f"comfyui-comfy-local-gpu0-{ports['comfyui0']}"
            alloc["port"] = ports["comfyui0"]
            found.append(alloc)
        return found

    def count(self) -> int:
        """The node group's count as Nomad has it now (`nomad job scale`, the autoscaler)."""
        return int(self.get(f"{self.nomad}/v1/job/comfyui")["TaskGroups"][0]["Count"])

    def deployed(self) -> bool:
        """The group's latest deployment is over (Nomad refuses to scale during one)."""
        latest = self.get(f"{self.nomad}/v1/job/comfyui/deployment")
        return latest is None or latest["Status"] != "running"

    # --- Consul's view
    def passing(self) -> set[str]:
        entries = self.get(f"{self.consul}/v1/health/service/comfyui", passing="true")
        return {entry["Service"]["ID"] for entry in entries}

    def settled(self, count: int) -> list[dict[str, Any]] | None:
        """`count` running allocations whose sidecars all pass, else None."""
        allocs = self.allocs()
        if len(allocs) == count and {a["node"] for a in allocs} == self.passing():
            return allocs
        return None

    # --- the API
    def submit(self, count: int, steps: int = 20) -> list[str]:
        ids = []
        for index in range(count):
            answer = httpx.post(f"{self.gateway}/api/v1/generate", timeout=10, json={
                "workflow": "txt2img", "params": {"prompt": f"task {index}", "steps": steps,
                                                  "width": 256, "height": 256}})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["task_id"])
        return ids

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"{self.gateway}/api/v1/tasks/{task_id}")
        return result

    def finish(self, ids: list[str], timeout: float = 180) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            records = [self.task(task_id) for task_id in ids]
            return records if all(r["status"] in TERMINAL for r in records) else None
        return wait_until(done, timeout, f"{len(ids)} tasks to finish", interval=0.5)


def running_cluster(run_dir: Any, nodes: int = 2,
                    extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """Body of a fixture: `up` with MESH=nomad in `run_dir`, stopped (Ctrl-C) afterwards."""
    (api_port,) = free_ports(1)
    env = {**os.environ, **(extra_env or {}), "MESH": "nomad", "RUN_DIR": str(run_dir),
           "SIM_NODES": str(nodes), "SIM_STEP_MS": str(STEP_MS), "API_PORT": str(api_port), "REDIS_PORT": "0",
           "PYTHONUNBUFFERED": "1"}
    for key in ("COMFYUI_URLS", "REDIS_URL", "API_KEYS"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "comfy_service.cli", "up"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until_up(proc, timeout=240)
        text = "\n".join(lines)
        urls = {name: re.search(rf"^\s+{name}\s+(http://[\d.:]+)", text, re.M)
                for name in ("gateway", "consul", "nomad")}
        assert all(urls.values()), text
        yield Cluster(proc, *(m.group(1) for m in urls.values() if m),  # type: ignore[arg-type]
                      nomad_bin=agent_binary("nomad"), banner=text)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
