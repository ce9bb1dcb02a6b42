"""The mesh as real processes: a Consul agent, simulated nodes each with a sidecar, the service."""

from __future__ import annotations

import json
import pathlib
import sys
import uuid
from typing import Any

import httpx

from tests.support.processes import ManagedProcess, SimNodeProcess, wait_until
from tests.support.service import Stack


class Sidecar:
    def __init__(self, root: pathlib.Path, sim: SimNodeProcess, consul_url: str, service: str,
                 name: str, gpu_util: float, gpu_uuid: str, weight: float | None = None) -> None:
        self.readings = root / f"{name}-gpu.json"
        self.sim = sim
        self.name = name
        self.set_gpu(gpu_util, gpu_uuid)
        self.proc = ManagedProcess(f"sidecar-{name}", [
            sys.executable, "-m", "comfy_service.cli", "sidecar"], root / f"sidecar-{name}.log",
            env={"COMFYUI_URL": sim.url, "CONSUL_HTTP_ADDR": consul_url,
                 "CONSUL_SERVICE_NAME": service, "GPU_READINGS_FILE": str(self.readings),
                 "NODE_HOSTNAME": name, "SIDECAR_PROBE_INTERVAL_S": "0.5",
                 "SIDECAR_TTL_S": "2", "LOG_FORMAT": "json",
                 **({} if weight is None else {"NODE_WEIGHT": str(weight)})})

    def set_gpu(self, util: float, gpu_uuid: str) -> None:
        self.readings.write_text(json.dumps({
            "uuid": gpu_uuid, "name": "NVIDIA H100 80GB HBM3", "index": 0,
            "utilization_pct": util, "memory_used_mb": 20000.0, "memory_total_mb": 81559.0,
            "temperature_c": 40.0, "power_w": 300.0}))


class Mesh:
    def __init__(self, root: pathlib.Path, consul_url: str, nodes: int, step_ms: float = 20,
                 env: dict[str, str] | None = None, gpu_utils: list[float] | None = None,
                 weights: list[float] | None = None, gpus: list[str] | None = None) -> None:
        """`gpus`: the GPU uuid of each node (default: a GPU of its own, GPU-<i>); nodes
        given the same one also share one virtual GPU in the simulator (--gpu-id)."""
        self.consul_url = consul_url
        self.root = root
        self.step_ms = step_ms
        self.service = f"comfyui-{uuid.uuid4().hex[:8]}"
        self.gpus = gpus or [f"GPU-{i}" for i in range(nodes)]
        self.stack = Stack(root, nodes=0 if gpus else nodes, step_ms=step_ms, workers=0, env={
            "DISCOVERY": "consul", "CONSUL_HTTP_ADDR": consul_url,
            "CONSUL_SERVICE_NAME": self.service, **(env or {})})
        utils = gpu_utils or [10.0] * nodes
        speeds: list[float | None] = list(weights) if weights else [None] * nodes
        self.sidecars: list[Sidecar] = []
        try:
            for i, gpu in enumerate(gpus or []):
                self.stack.sims.append(SimNodeProcess(
                    root / f"sim{i}", "--gpu-id", gpu, "--gpu-dir", str(root / "gpus"),
                    step_ms=step_ms))
            for i, sim in enumerate(self.stack.sims):
                self.sidecars.append(Sidecar(root, sim, consul_url, self.service, f"node{i}",
                                             utils[i], self.gpus[i], speeds[i]))
            self.wait_passing(nodes)
            self.stack.start_worker()
            self.stack.wait_nodes_healthy(nodes)
        except BaseException:
            self.stop()  # a failed start must not leave processes behind
            raise

    def add_node(self, gpu_util: float, weight: float | None = None) -> int:
        """Start one more sim with its sidecar (registering with Consul); returns its index."""
        index = len(self.stack.sims)
        sim = SimNodeProcess(self.root / f"sim{index}", step_ms=self.step_ms)
        self.stack.sims.append(sim)  # from here on, stopping the mesh stops it too
        self.sidecars.append(Sidecar(self.root, sim, self.consul_url, self.service,
                                     f"node{index}", gpu_util, f"GPU-{index}", weight))
        return index

    def passing(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = httpx.get(
            f"{self.consul_url}/v1/health/service/{self.service}",
            params={"passing": "true"}, timeout=5).json()
        return entries

    def wait_passing(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def exactly() -> list[dict[str, Any]] | None:
            entries = self.passing()
            return entries if len(entries) == count else None
        return wait_until(exactly, timeout, f"{count} passing {self.service} services")

    def node_of(self, task: dict[str, Any]) -> int:
        """Index of the sim a task ran on (node names are the sidecars' service ids, which
        end in the ComfyUI port)."""
        port = int(task["node"].rsplit("-", 1)[1])
        return next(i for i, sim in enumerate(self.stack.sims) if sim.port == port)

    def stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.proc.stop()
        self.stack.stop()
