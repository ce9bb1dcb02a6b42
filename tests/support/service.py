"""The whole service as real processes: redis-server, simulated nodes, gateway and workers."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

import httpx

from tests.support.processes import (
    ManagedProcess,
    RedisProcess,
    SimNodeProcess,
    free_port,
    serving,
    wait_until,
)

FINAL = ("succeeded", "failed", "cancelled")


class Stack:
    def __init__(self, root: pathlib.Path, nodes: int = 1, step_ms: float = 20,
                 env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.root = root
        self.gateway: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []
        self.sims: list[SimNodeProcess] = []
        self.redis = RedisProcess(root / "redis")
        try:
            self._start(nodes, step_ms, env, workers)
        except BaseException:
            self.stop()  # a failed start must not leave processes behind
            raise

    def _start(self, nodes: int, step_ms: float, env: dict[str, str] | None,
               workers: int) -> None:
        root = self.root
        for i in range(nodes):
            self.sims.append(SimNodeProcess(root / f"sim{i}", step_ms=step_ms))
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            "REDIS_URL": self.redis.url, "API_PORT": str(self.api_port),
            "COMFYUI_URLS": ",".join(s.url for s in self.sims),
            "OUTPUT_DIR": str(root / "outputs"), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
            "LEASE_TTL_S": "2", **(env or {})}
        keys = [k for k in self.env.get("API_KEYS", "").split(",") if k]
        # With keys configured, the helpers act as the first key's tenant.
        self.http = httpx.Client(base_url=self.url, timeout=10, headers={
            "Authorization": f"Bearer {keys[0]}"} if keys else None)
        self.start_gateway()
        for _ in range(workers):
            self.start_worker()
        if workers:
            self.wait_nodes_healthy(len(self.sims))

    def _spawn(self, role: str, name: str, extra_env: dict[str, str] | None = None
               ) -> ManagedProcess:
        return ManagedProcess(name, [sys.executable, "-m", "comfy_service.cli", role],
                              self.root / f"{name}.log", env={**self.env, **(extra_env or {})})

    def start_gateway(self) -> None:
        self.gateway = self._spawn("gateway", "gateway")
        wait_until(self._gateway_up, 20, "the gateway to answer /healthz")

    def _gateway_up(self) -> bool:
        assert self.gateway is not None
        return serving(self.gateway, f"{self.url}/healthz", "gateway")

    def start_worker(self, extra_env: dict[str, str] | None = None) -> ManagedProcess:
        index = len(self.workers)
        worker = self._spawn("worker", f"worker{index}",
                             {"WORKER_ID": f"w{index}", **(extra_env or {})})
        self.workers.append(worker)
        return worker

    def wait_nodes_healthy(self, count: int, timeout: float = 20) -> None:
        def healthy() -> bool:
            nodes = self.http.get("/api/v1/nodes").json()["nodes"]
            return sum(1 for n in nodes if n["healthy"]) >= count
        wait_until(healthy, timeout, f"{count} healthy nodes")

    def submit(self, body: dict[str, Any] | None = None, **headers: str) -> str:
        answer = self.http.post("/api/v1/generate", json=body or txt2img_body(),
                                headers=headers)
        assert answer.status_code == 202, answer.text
        task_id: str = answer.json()["task_id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/v1/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def wait_task(self, task_id: str, statuses: tuple[str, ...] = FINAL,
                  timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            record = self.task(task_id)
            return record if record["status"] in statuses else None
        return wait_until(reached, timeout, f"task {task_id} to reach {statuses}", interval=0.05)

    def logs(self) -> str:
        parts = []
        for proc in [self.gateway, *self.workers]:
            if proc is not None:
                parts.append(f"--- {proc.name}\n{proc.log_tail(60)}")
        return "\n".join(parts)

    def stop(self) -> None:
        if hasattr(self, "http"):
            self.http.close()
        for proc in [*self.workers, self.gateway, *self.sims, self.redis]:
            if proc is not None:
                proc.stop()


def txt2img_body(steps: int = 3, **params: Any) -> dict[str, Any]:
    return {"workflow": "txt2img",
            "params": {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": steps,
                       **params}}


def slow_body(steps: int) -> dict[str, Any]:
    return txt2img_body(steps=steps, seed=int(time.time() * 1000) % 100000 + os.getpid())
