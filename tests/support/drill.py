"""The fault drill's cluster and fault plan: Redis (append-only), Consul, nodes with sidecars,
workers and a multi-process gateway, each of which the drill can kill, hang or restart.

The run itself (steady load, faults, settle, checks, report) is in the second half;
scripts/drill.py is its command line and tests/test_drill.py the short run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import redis

from comfy_service import constants as c
from comfy_service.agents.binaries import agent_binary
from comfy_service.agents.consul_agent import ConsulAgent
from comfy_service.agents.process import remove_tree, short_tmpdir
from comfy_service.outputs import task_prefix
from comfy_service.polling import wait_until
from tests.support.mesh import Sidecar
from tests.support.processes import (
    ROOT,
    SimNodeProcess,
    free_port,
    redis_server_binary,
    serving,
)
from tests.support.service import FINAL, txt2img_body

START_TIMEOUT_S = 60.0  # a cold start on a loaded 2-core machine is the slow case


@dataclass(frozen=True)
class DrillConfig:
    """How long, how hard, and how many of each fault; `short()` and `long()` are the presets."""

    seed: int = 1
    warmup_s: float = 15.0
    duration_s: float = 75.0
    settle_s: float = 180.0     # after the faults stop, every accepted task must end within this
    stall_s: float = 60.0       # ...and settling stops early once nothing has ended for this long
    rate: float = 3.0           # steady submits per second
    steps: tuple[int, int] = (3, 10)
    step_ms: float = 20.0
    nodes: int = 3
    workers: int = 2
    api_workers: int = 2
    worker_kills: int = 4
    node_kills: int = 2
    node_hangs: int = 2
    redis_restarts: int = 1
    consul_restarts: int = 1
    gateway_kills: int = 1
    bursts: int = 1
    burst_size: int = 300
    failing_nodes: int = 1
    slow_nodes: int = 1
    redis_crash: bool = True    # restart Redis with SIGKILL (a process crash), not SIGTERM

    @classmethod
    def short(cls, **changes: Any) -> DrillConfig:
        return replace(cls(), **changes)

    @classmethod
    def long(cls, **changes: Any) -> DrillConfig:
        return replace(cls(warmup_s=30.0, duration_s=600.0, settle_s=900.0, rate=3.0,
                           worker_kills=100, node_kills=20, node_hangs=20, redis_restarts=5,
                           consul_restarts=5, gateway_kills=5, bursts=1, burst_size=10_000,
                           failing_nodes=4, slow_nodes=4), **changes)


# --- the fault plan (pure) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    at: float                   # seconds after the fault phase began
    kind: str
    target: int | None = None   # node or worker index
    value: Any = None           # step_ms for node_slow, burst size for burst

    @property
    def counted(self) -> bool:
        """Whether this event is a fault (not the end of one)."""
        return not self.kind.endswith("_end")


def plan_faults(config: DrillConfig) -> list[Fault]:
    """Every fault of the run, from the seed alone: kinds, times, targets, durations."""
    rng = random.Random(config.seed)
    span = config.duration_s
    events: list[Fault] = []

    def times(count: int, last: float = 0.85) -> list[float]:
        return sorted(round(rng.uniform(0.05 * span, last * span), 2) for _ in range(count))

    for at in times(config.worker_kills):
        events.append(Fault(at, "worker_kill", rng.randrange(config.workers)))
    for at in times(config.node_kills):
        events.append(Fault(at, "node_kill", rng.randrange(config.nodes)))
    for serial, at in enumerate(times(config.node_hangs, 0.8)):
        node = rng.randrange(config.nodes)  # value pairs a hang with its end (it may retarget)
        events.append(Fault(at, "node_hang", node, serial))
        events.append(Fault(min(span, round(at + rng.uniform(2.0, 6.0), 2)), "node_hang_end",
                            node, serial))
    for at in times(config.redis_restarts):
        events.append(Fault(at, "redis_restart"))
    for at in times(config.consul_restarts):
        events.append(Fault(at, "consul_restart"))
    for at in times(config.gateway_kills):
        events.append(Fault(at, "gateway_kill"))
    for at in times(config.bursts, 0.5):
        events.append(Fault(at, "burst", value=config.burst_size))
    for at in times(config.failing_nodes, 0.75):
        node = rng.randrange(config.nodes)
        events.append(Fault(at, "node_fail", node))
        events.append(Fault(min(span, round(at + rng.uniform(4.0, 10.0), 2)), "node_fail_end", node))
    for at in times(config.slow_nodes, 0.75):
        node = rng.randrange(config.nodes)
        for i, step_ms in enumerate((40.0, 80.0, 160.0, 320.0)):  # slower and slower
            events.append(Fault(min(span, at + 3.0 * i), "node_slow", node, step_ms))
        events.append(Fault(min(span, at + 12.0), "node_slow_end", node))
    return sorted(events, key=lambda f: (f.at, f.kind))


# --- processes ----------------------------------------------------------------------------------
class Proc:
    """A child in its own session, so a SIGKILL of its leader can be told from one of its group."""

    def __init__(self, name: str, argv: list[str], log_path: pathlib.Path,
                 env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, **env}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def group_alive(self) -> list[int]:
        """Pids still in this process's group (its leader may be gone)."""
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.pid and \
                            (entry / "stat").read_text().split()[2] != "Z":
                        found.append(int(entry.name))
                except (OSError, IndexError):
                    continue
        return found

    def kill(self) -> None:
        """SIGKILL the process alone (its children, if any, are left as a crash leaves them)."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")  # -LOADING while it reads the AOF
    except OSError:
        return False


class DurableRedis:
    """redis-server with appendonly yes / appendfsync always (as the production Nomad job runs
    it: a 202 must survive a Redis crash) that restarts on the same port and directory, so it
    comes back from its AOF."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--protected-mode", "yes"]
        self.proc = Proc(f"redis:{self.port}", argv, self.data_dir / "redis.log", {})
        wait_until(lambda: self._up(), START_TIMEOUT_S, f"redis-server on {self.port}")

    def _up(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise RuntimeError(f"redis-server exited:\n{self.proc.log_tail()}")
        return redis_ping(self.port)

    def restart(self, crash: bool) -> None:
        assert self.proc is not None
        if crash:
            self.proc.kill()
        else:
            self.proc.stop(30)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# --- the cluster --------------------------------------------------------------------------------
@dataclass
class Incident:
    """Something the drill did not cause: a process that exited on its own."""

    name: str
    at: float
    code: int | None
    log_tail: str


@dataclass
class NodeState:
    sim: SimNodeProcess
    sidecar: Sidecar
    hung: bool = False
    histories: list[set[str]] = field(default_factory=list)  # of killed incarnations


class Cluster:
    """Redis, Consul, N nodes with sidecars, workers and the gateway, all on loopback."""

    def __init__(self, root: pathlib.Path, config: DrillConfig) -> None:
        self.root = root
        self.config = config
        self.redis: DurableRedis | None = None
        self.consul: ConsulAgent | None = None
        self.nodes: list[NodeState] = []
        self.workers: list[Proc] = []
        self.gateway: Proc | None = None
        self.incidents: list[Incident] = []
        self.gateway_orphans: list[int] = []  # pids left serving after each gateway SIGKILL
        self._incarnation = 0
        root.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()  # a failed start must not leave processes behind
            raise

    def _start(self) -> None:
        config = self.config
        self.redis = DurableRedis(self.root / "redis")
        self.consul = ConsulAgent(agent_binary("consul"), short_tmpdir("drill-consul-"))
        self.consul.start_timeout = START_TIMEOUT_S
        self.consul.start()
        self.service = f"comfyui-{uuid.uuid4().hex[:8]}"
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.output_dir = self.root / "outputs"
        self.env = {
            "REDIS_URL": self.redis.url, "API_PORT": str(self.api_port),
            "API_WORKERS": str(config.api_workers), "OUTPUT_DIR": str(self.output_dir),
            "DISCOVERY": "consul", "CONSUL_HTTP_ADDR": self.consul.url,
            "CONSUL_SERVICE_NAME": self.service, "LEASE_TTL_S": "2", "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO"}
        for i in range(config.nodes):
            sim = SimNodeProcess(self.root / f"sim{i}", step_ms=config.step_ms)
            sidecar = Sidecar(self.root, sim, self.consul.url, self.service, f"node{i}",
                              10.0, f"GPU-{i}")
            self.nodes.append(NodeState(sim, sidecar))
        wait_until(lambda: len(self.passing()) == config.nodes, START_TIMEOUT_S,
                   "every sidecar to pass in Consul")
        self.start_gateway()
        for i in range(config.workers):
            self.workers.append(self._spawn_worker(i))
        wait_until(lambda: self.healthy_nodes() >= config.nodes, START_TIMEOUT_S,
                   "the workers to see every node healthy")

    # --- reading state ---
    def passing(self) -> list[Any]:
        assert self.consul is not None
        entries: list[Any] = httpx.get(f"{self.consul.url}/v1/health/service/{self.service}",
                                       params={"passing": "true"}, timeout=5).json()
        return entries

    def healthy_nodes(self) -> int:
        nodes = httpx.get(f"{self.url}/api/v1/nodes", timeout=5).json()["nodes"]
        return sum(1 for n in nodes if n["healthy"])

    def history(self, index: int) -> set[str]:
        answer = httpx.get(f"{self.nodes[index].sim.url}/history", timeout=60)
        answer.raise_for_status()
        return set(answer.json())

    def node_index(self, node_name: str | None) -> int | None:
        """Which node a record's `node` names (service ids end in the ComfyUI port)."""
        if not node_name:
            return None
        port = int(node_name.rsplit("-", 1)[1])
        return next((i for i, n in enumerate(self.nodes) if n.sim.port == port), None)

    # --- processes ---
    def _spawn_worker(self, slot: int) -> Proc:
        self._incarnation += 1
        worker_id = f"w{slot}-{self._incarnation}"
        return Proc(f"worker{slot}", [sys.executable, "-m", "comfy_service.cli", "worker"],
                    self.root / f"worker{slot}.log", {**self.env, "WORKER_ID": worker_id})

    def start_gateway(self) -> None:
        self.gateway = Proc("gateway", [sys.executable, "-m", "comfy_service.cli", "gateway"],
                            self.root / "gateway.log", self.env)
        gateway = self.gateway
        wait_until(lambda: serving(gateway, f"{self.url}/healthz", "gateway"), START_TIMEOUT_S,
                   "the gateway to answer /healthz", interval=0.1)

    # --- faults (each blocking; the drill runs them in a thread) ---
    def kill_worker(self, slot: int) -> str:
        old = self.workers[slot]
        old.kill()
        self.workers[slot] = self._spawn_worker(slot)
        return f"pid {old.pid} -> {self.workers[slot].pid}"

    def kill_node(self, index: int) -> str:
        node = self.nodes[index]
        node.histories.append(self.history(index))  # a restarted ComfyUI forgets its history
        node.sim.kill()
        old_pid = node.sim.proc.pid
        node.sim = SimNodeProcess(node.sim.base_dir, port=node.sim.port,
                                  step_ms=self.config.step_ms)
        return f"pid {old_pid} -> {node.sim.proc.pid} (history of {len(node.histories[-1])} kept)"

    def sim_faults(self, index: int, changes: dict[str, Any]) -> str:
        httpx.post(f"{self.nodes[index].sim.url}/sim/faults", json=changes,
                   timeout=10).raise_for_status()
        if "hang" in changes:
            self.nodes[index].hung = bool(changes["hang"])
        return str(changes)

    def restart_redis(self) -> str:
        assert self.redis is not None
        self.redis.restart(self.config.redis_crash)
        return "SIGKILL, restarted from its AOF" if self.config.redis_crash else "SIGTERM"

    def restart_consul(self) -> str:
        assert self.consul is not None
        self.consul.restart()
        return "dev agent restarted (empty catalog; sidecars register again)"

    def kill_gateway(self) -> str:
        assert self.gateway is not None
        self.gateway.kill()
        # uvicorn's worker processes outlive a SIGKILLed master and keep the port; say so, then
        # do what a cgroup-aware supervisor does (kill the group) so a new gateway can bind.
        left = self.gateway.group_alive()
        self.gateway_orphans.extend(left)
        self.gateway.kill_group()
        self.start_gateway()
        return f"master SIGKILLed; {len(left)} orphaned processes of its group were still alive"

    def check_processes(self, now: float) -> list[str]:
        """Restart whatever exited on its own (a supervisor would), noting each as an incident."""
        restarted = []
        for slot, worker in enumerate(self.workers):
            if not worker.alive():
                self.incidents.append(Incident(worker.name, now, worker.proc.returncode,
                                               worker.log_tail()))
                self.workers[slot] = self._spawn_worker(slot)
                restarted.append(worker.name)
        if self.gateway is not None and not self.gateway.alive():
            self.incidents.append(Incident("gateway", now, self.gateway.proc.returncode,
                                           self.gateway.log_tail()))
            self.gateway.kill_group()
            self.start_gateway()
            restarted.append("gateway")
        for i, node in enumerate(self.nodes):
            if not node.sidecar.proc.alive():
                assert self.consul is not None
                self.incidents.append(Incident(node.sidecar.proc.name, now,
                                               node.sidecar.proc.proc.returncode,
                                               node.sidecar.proc.log_tail()))
                node.sidecar = Sidecar(self.root, node.sim, self.consul.url, self.service,
                                       f"node{i}", 10.0, f"GPU-{i}")
                restarted.append(f"sidecar{i}")
        return restarted

    def end_faults(self) -> None:
        for i, node in enumerate(self.nodes):
            self.sim_faults(i, {"hang": False, "fail_next": 0, "step_ms": None})
            node.hung = False

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.gateway is not None:
            self.gateway.stop()
        for node in self.nodes:
            node.sidecar.proc.stop()
            node.sim.stop()
        if self.consul is not None:
            self.consul.stop()
            remove_tree(self.consul.workdir)
        if self.redis is not None:
            self.redis.stop()



# --- the load: a paced stream and bursts, each submit retried with its Idempotency-Key ----------
@dataclass
class Submission:
    key: str
    phase: str              # warmup, faults or burst
    body: dict[str, Any]
    task_id: str | None = None
    tries: int = 0
    rejected: int | None = None  # a 4xx other than the retried ones


class Load:
    RETRY_STATUSES = frozenset({500, 502, 503, 504})

    def __init__(self, url: str, config: DrillConfig) -> None:
        self.config = config
        self.client = httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(
            max_connections=64, max_keepalive_connections=32))
        self.rng = random.Random(config.seed + 1)
        self.submissions: list[Submission] = []
        self.running: set[asyncio.Task[None]] = set()
        self.give_up_at = float("inf")
        self._gate = asyncio.Semaphore(64)

    def start(self, phase: str) -> None:
        n = len(self.submissions)
        body = txt2img_body(steps=self.rng.randint(*self.config.steps), seed=n)
        sub = Submission(f"drill-{self.config.seed}-{n}", phase, body)
        self.submissions.append(sub)
        job = asyncio.create_task(self._submit(sub))
        self.running.add(job)
        job.add_done_callback(self.running.discard)

    async def _submit(self, sub: Submission) -> None:
        """Until a 202 (or a final 4xx, or the give-up time): same key, same body."""
        async with self._gate:
            while time.monotonic() < self.give_up_at:
                sub.tries += 1
                try:
                    answer = await self.client.post("/api/v1/generate", json=sub.body,
                                                    headers={"Idempotency-Key": sub.key})
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 202:
                    sub.task_id = answer.json()["task_id"]
                    return
                if answer is not None and answer.status_code not in self.RETRY_STATUSES:
                    sub.rejected = answer.status_code
                    return
                await asyncio.sleep(min(1.0, 0.1 * sub.tries))

    async def stream(self, phase: str, until: float) -> None:
        """Submits due at a fixed rate, whatever the answers do (open loop)."""
        began, n = time.monotonic(), 0
        while time.monotonic() < until:
            self.start(phase)
            n += 1
            await asyncio.sleep(max(0.0, began + n / self.config.rate - time.monotonic()))

    def burst(self, size: int) -> None:
        for _ in range(size):
            self.start("burst")

    async def drain(self) -> None:
        while self.running:
            await asyncio.wait(set(self.running))


# --- the run ------------------------------------------------------------------------------------
@dataclass
class FaultEntry:
    t: float
    kind: str
    target: int | None
    detail: str
    wall: str = field(default_factory=lambda: time.strftime("%H:%M:%S"))
    took_s: float = 0.0
    error: str | None = None


class Drill:
    """Warm-up, then the fault plan under a steady stream, then settle and check."""

    def __init__(self, config: DrillConfig, root: pathlib.Path,
                 say: Callable[[str], None] = print) -> None:
        self.config = config
        self.root = root
        self.say = say
        self.plan = plan_faults(config)
        self.log: list[FaultEntry] = []
        self.lock = asyncio.Lock()
        self._hung_by: dict[int, int] = {}

    def run(self) -> Report:
        self.say(f"drill: seed {self.config.seed}, {len(self.plan)} fault events over "
                 f"{self.config.duration_s:.0f}s, logs under {self.root}")
        cluster = Cluster(self.root, self.config)
        try:
            report = asyncio.run(self._run(cluster))
        finally:
            cluster.stop()
        (self.root / "faults.jsonl").write_text("".join(
            json.dumps(dataclasses.asdict(e)) + "\n" for e in self.log))
        (self.root / "report.txt").write_text(f"{report.table()}\n{report.problems()}\n")
        return report

    async def _run(self, cluster: Cluster) -> Report:
        config = self.config
        load = Load(cluster.url, config)
        watching = asyncio.create_task(self._watch(cluster))
        try:
            self.say(f"warm-up: {config.warmup_s:.0f}s at {config.rate}/s")
            await load.stream("warmup", time.monotonic() + config.warmup_s)
            self.t0 = time.monotonic()
            end = self.t0 + config.duration_s
            self.say(f"faults: {config.duration_s:.0f}s")
            await asyncio.gather(load.stream("faults", end), self._inject(cluster, load))
            async with self.lock:
                await asyncio.to_thread(cluster.end_faults)
            self.faults_ended = time.monotonic()
            self.say(f"faults over at t={self.faults_ended - self.t0:.1f}s; settling")
            load.give_up_at = self.faults_ended + 120
            await load.drain()
            records = await asyncio.to_thread(self._settle, cluster, load)
        finally:
            watching.cancel()
            await load.client.aclose()
        return await asyncio.to_thread(self._verdict, cluster, load, records)

    async def _watch(self, cluster: Cluster) -> None:
        while True:
            await asyncio.sleep(1.0)
            async with self.lock:
                for name in await asyncio.to_thread(cluster.check_processes,
                                                    time.monotonic() - getattr(self, "t0", 0)):
                    self.say(f"INCIDENT: {name} exited on its own; restarted")

    async def _inject(self, cluster: Cluster, load: Load) -> None:
        for fault in self.plan:
            await asyncio.sleep(max(0.0, self.t0 + fault.at - time.monotonic()))
            began = time.monotonic()
            entry = FaultEntry(round(began - self.t0, 2), fault.kind, fault.target, "")
            try:
                async with self.lock:
                    entry.detail = await self._apply(cluster, load, fault, entry)
            except Exception as exc:  # logged and counted; the drill goes on
                entry.error = f"{type(exc).__name__}: {exc}"
            entry.took_s = round(time.monotonic() - began, 2)
            self.log.append(entry)
            self.say(f"  t={entry.t:7.2f}s {entry.wall} {fault.kind:15} "
                     f"{'' if entry.target is None else entry.target!s:3} {entry.detail}"
                     f"{' ERROR ' + entry.error if entry.error else ''} ({entry.took_s}s)")

    def _free_node(self, cluster: Cluster, wanted: int) -> int | None:
        """The wanted node, or the next one that is not hung (a hung node's history is out of
        reach, so it is neither killed nor hung again)."""
        n = len(cluster.nodes)
        return next((i % n for i in range(wanted, wanted + n) if not cluster.nodes[i % n].hung),
                    None)

    async def _apply(self, cluster: Cluster, load: Load, fault: Fault, entry: FaultEntry) -> str:
        kind, run = fault.kind, asyncio.to_thread
        if kind == "worker_kill":
            assert fault.target is not None
            return await run(cluster.kill_worker, fault.target)
        if kind == "burst":
            load.burst(fault.value)
            return f"{fault.value} submits"
        if kind == "redis_restart":
            return await run(cluster.restart_redis)
        if kind == "consul_restart":
            return await run(cluster.restart_consul)
        if kind == "gateway_kill":
            return await run(cluster.kill_gateway)
        assert fault.target is not None
        if kind in ("node_kill", "node_hang"):
            target = self._free_node(cluster, fault.target)
            entry.target = target
            if target is None:
                entry.kind = f"{kind}_skipped"
                return "every node is hung"
            if kind == "node_kill":
                return await run(cluster.kill_node, target)
            self._hung_by[fault.value] = target
            return await run(cluster.sim_faults, target, {"hang": True})
        if kind == "node_hang_end":
            target = self._hung_by.pop(fault.value, None)
            entry.target = target
            if target is None:
                return "its hang was skipped"
            return await run(cluster.sim_faults, target, {"hang": False})
        if kind == "node_fail":
            return await run(cluster.sim_faults, fault.target, {
                "fail_next": 1_000_000, "failure_message": "drill: this node fails every prompt"})
        if kind == "node_fail_end":
            return await run(cluster.sim_faults, fault.target, {"fail_next": 0})
        if kind == "node_slow":
            return await run(cluster.sim_faults, fault.target, {"step_ms": fault.value})
        if kind == "node_slow_end":
            return await run(cluster.sim_faults, fault.target, {"step_ms": None})
        raise ValueError(f"unknown fault {kind}")

    def _settle(self, cluster: Cluster, load: Load) -> dict[str, dict[str, Any] | None]:
        """Poll Redis until every accepted task has ended, or the settle deadline passes."""
        assert cluster.redis is not None
        ids = [s.task_id for s in load.submissions if s.task_id]
        deadline = self.faults_ended + self.config.settle_s
        client = redis.Redis.from_url(cluster.redis.url)
        records: dict[str, dict[str, Any] | None] = {}
        try:
            open_ids, last_change, previous = list(ids), time.monotonic(), -1
            while True:
                for i in range(0, len(open_ids), 500):
                    chunk = open_ids[i:i + 500]
                    for task_id, raw in zip(chunk, client.mget(
                            [c.TASK_KEY.format(task_id=t) for t in chunk]), strict=True):
                        records[task_id] = json.loads(raw) if raw else None
                open_ids = [t for t in ids if records.get(t) is None
                            or records[t]["status"] not in FINAL]  # type: ignore[index]
                if len(open_ids) != previous:
                    previous, last_change = len(open_ids), time.monotonic()
                if not open_ids or time.monotonic() > deadline \
                        or time.monotonic() - last_change > self.config.stall_s:
                    break
                self.say(f"  {len(open_ids)} of {len(ids)} tasks not ended yet")
                time.sleep(2.0)  # polling interval, bounded by the deadline above
            self.settled_after = time.monotonic() - self.faults_ended
            self.orphans = sorted(
                k.decode().split(":", 2)[2] for k in client.scan_iter(
                    c.TASK_KEY.format(task_id="*"), count=1000)
                if k.decode().split(":", 2)[2] not in set(ids))
        finally:
            client.close()
        return records

    def _verdict(self, cluster: Cluster, load: Load,
                 records: dict[str, dict[str, Any] | None]) -> Report:
        runs_in_history: Counter[str] = Counter()
        for i, node in enumerate(cluster.nodes):
            for history in [*node.histories, cluster.history(i)]:
                runs_in_history.update(history)
        files_on_nodes: Counter[str] = Counter(
            path.name.rsplit("_", 2)[0] for node in cluster.nodes
            for path in node.sim.base_dir.glob("**/cs/*.png"))
        report = Report(self.config, faults=Counter(e.kind for e in self.log
                                                    if Fault(0, e.kind).counted),
                        fault_errors=[e for e in self.log if e.error], fault_log=self.log,
                        incidents=cluster.incidents, gateway_orphans=len(cluster.gateway_orphans),
                        settled_after_s=self.settled_after, orphans=self.orphans)
        for sub in load.submissions:
            report.add(sub, records.get(sub.task_id or ""), cluster.output_dir,
                       runs_in_history[sub.task_id or ""], files_on_nodes[sub.task_id or ""])
        return report


# --- the verdict --------------------------------------------------------------------------------
def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def _seconds(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


@dataclass
class Report:
    config: DrillConfig
    faults: Counter[str]
    fault_errors: list[FaultEntry]
    fault_log: list[FaultEntry]
    incidents: list[Incident]
    gateway_orphans: int
    settled_after_s: float
    orphans: list[str]
    submitted: int = 0
    accepted: int = 0
    never_accepted: list[str] = field(default_factory=list)   # idempotency keys
    rejected: Counter[int] = field(default_factory=Counter)
    retried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)             # accepted, and no record
    stuck: list[str] = field(default_factory=list)            # not ended by the deadline
    duplicated: list[str] = field(default_factory=list)       # ran more often than attempted
    stray_outputs: list[str] = field(default_factory=list)    # files the record does not list
    unseen: int = 0   # succeeded, yet in no node's history or files: the run tracking missed it
    uncoded: list[str] = field(default_factory=list)          # failed without a reason code
    waits: dict[str, list[float]] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)

    def add(self, sub: Submission, record: dict[str, Any] | None, output_dir: pathlib.Path,
            history_runs: int, file_runs: int) -> None:
        self.submitted += 1
        self.retried += sub.tries > 1
        if sub.rejected is not None:
            self.rejected[sub.rejected] += 1
            return
        if sub.task_id is None:
            self.never_accepted.append(sub.key)
            return
        task_id = sub.task_id
        self.accepted += 1
        if record is None:
            self.lost.append(task_id)
            return
        status, attempts = record["status"], record["attempts"]
        self.statuses[status] += 1
        self.attempts[attempts] += 1
        if status not in FINAL:
            self.stuck.append(f"{task_id} {status} attempts={attempts} node={record['node']}")
            return
        if status == "failed":
            code = (record.get("error") or {}).get("code")
            self.failed_by_code[code or "(none)"] += 1
            if not code:
                self.uncoded.append(task_id)
        folder = output_dir / task_prefix(task_id)
        # A write cut off by a killed worker leaves the store's staging file (`name#n`), never
        # an object; retention removes the folder with the task.
        files = sorted(p.name for p in folder.iterdir() if "#" not in p.name) \
            if folder.is_dir() else []
        expected = len(record["outputs"]) if status == "succeeded" else 0
        runs = max(history_runs, file_runs)
        if len(files) != expected:
            self.stray_outputs.append(f"{task_id} {status}: {len(files)} output files {files}, "
                                      f"record lists {expected}; error={record.get('error')}")
        if runs > attempts:
            self.duplicated.append(f"{task_id} {status}: ran {runs} times (in {history_runs} "
                                   f"node histories, {file_runs} node files), {attempts} attempts")
        self.unseen += status == "succeeded" and runs == 0
        if record.get("started_at"):
            self.waits.setdefault(sub.phase, []).append(
                _seconds(record["created_at"], record["started_at"]))

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.duplicated or self.stray_outputs
                    or self.uncoded or self.never_accepted)

    def table(self) -> str:
        rows: list[tuple[str, str]] = [("seed", str(self.config.seed))]
        rows += [(f"faults: {kind}", str(n)) for kind, n in sorted(self.faults.items())]
        rows += [("fault actions that errored", str(len(self.fault_errors))),
                 ("processes that exited on their own", str(len(self.incidents))),
                 ("gateway processes orphaned by a master SIGKILL", str(self.gateway_orphans)),
                 ("submissions (idempotency keys)", str(self.submitted)),
                 ("  of which retried at least once", str(self.retried)),
                 ("  never accepted (gave up)", str(len(self.never_accepted))),
                 ("  rejected (4xx)", str(sum(self.rejected.values()))),
                 ("tasks accepted (202)", str(self.accepted)),
                 ("succeeded", str(self.statuses["succeeded"])),
                 ("cancelled", str(self.statuses["cancelled"]))]
        rows += [(f"failed: {code}", str(n)) for code, n in sorted(self.failed_by_code.items())]
        rows += [("lost (must be 0)", str(len(self.lost))),
                 ("not ended by the deadline (must be 0)", str(len(self.stuck))),
                 ("duplicated: ran more often than attempted (must be 0)",
                  str(len(self.duplicated))),
                 ("duplicated: output files not as the record says (must be 0)",
                  str(len(self.stray_outputs))),
                 ("succeeded but no run seen on a node (tracking check)", str(self.unseen)),
                 ("failed without a code (must be 0)", str(len(self.uncoded))),
                 ("records nobody was answered 202 for", str(len(self.orphans))),
                 ("attempts per task", ", ".join(f"{k}: {v}" for k, v in
                                                 sorted(self.attempts.items()))),
                 ("all ended, after the faults stopped", f"{self.settled_after_s:.1f} s")]
        for phase in ("warmup", "faults", "burst"):
            waits = self.waits.get(phase, [])
            p50, p99 = percentile(waits, 50), percentile(waits, 99)
            rows.append((f"queue wait {phase} (n={len(waits)}) p50 / p99",
                         "-" if p99 is None else f"{p50:.2f} s / {p99:.2f} s"))
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:{width}} | {v} |" for k, v in rows]
        return "\n".join(lines)

    def problems(self, limit: int = 20) -> str:
        """The evidence: which tasks, and every incident with its log tail."""
        parts = []
        for name, items in (("lost", self.lost), ("stuck", self.stuck),
                            ("duplicated", self.duplicated),
                            ("stray outputs", self.stray_outputs), ("uncoded", self.uncoded),
                            ("never accepted", self.never_accepted)):
            if items:
                parts.append(f"{name} ({len(items)}):\n  " + "\n  ".join(items[:limit]))
        for entry in self.fault_errors:
            parts.append(f"fault error at t={entry.t}s {entry.kind} {entry.target}: {entry.error}")
        for incident in self.incidents:
            parts.append(f"incident: {incident.name} exited (code {incident.code}) at "
                         f"t={incident.at:.1f}s; log tail:\n{incident.log_tail}")
        return "\n".join(parts)
