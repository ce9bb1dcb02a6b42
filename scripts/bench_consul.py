"""`scripts/bench_consul.py 16,64,256,1000`: the Consul side of the control plane with N nodes.

Per point: a Consul dev agent on loopback (Prometheus telemetry on), a node farm of N simulated
ComfyUIs (`comfyui_sim --nodes N --cheap-images --step-ms 1000`), one sidecar process following
all N (COMFYUI_URLS, one thread each: the sidecar farm), prompts kept running on every node
(txt2img, 2 steps x 1,000 ms, one posted straight to each node's /prompt every 2 s after two to
start: about one running and one waiting), GPU readings that swing between 5 % and 95 % every
second (the worst case for the GPU-load thresholds), and K watchers doing what a worker does:
WATCHERS-1 raw blocking queries on /v1/health/service/comfyui (index, wait=30s, gzip, as
py-consul's aiohttp client asks, paced like the worker's by discovery.MIN_QUERY_INTERVAL_S)
that count returns and bytes, plus one
`actors.discovery.watch_consul` with a counting listener. Over a fixed window it reads:

  raft writes/s      consul_raft_apply (Prometheus counter) delta / window
  catalog syncs/s    consul_catalog_register_count (the agent's anti-entropy Catalog.Register)
  re-registrations/s consul_api_http_count{PUT v1_agent_service_register}
  TTL updates/s      consul_api_http_count{PUT v1_agent_check_pass_ and _fail_}
  KV reads/s         consul_api_http_count{GET v1_kv_} (the sidecars' cordon/drain wishes)
  returns/s, bytes/s per raw watcher (wire bytes, gzip; and decoded JSON)
  listener calls/s   of watch_consul
  cores, RSS         /proc/<pid>/stat and status of Consul, the sidecar farm, the node farm,
                     this process (load and watchers), and the machine (/proc/stat)

Environment: BENCH_CONSUL_MAX_CONNS (Consul's limits.http_max_conns_per_client, default 200),
BENCH_GPU_SWING=0 (a steady GPU), BENCH_SIDECAR_TTL_S (default 5). Prints Markdown rows.
Dev-mode Consul is client agent and server in one: its CPU covers the agent HTTP API that in
production is spread over each host's own agent (all N services on one agent here, about 8
per agent in production), and the Raft writes that the servers carry.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pathlib
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors import discovery  # noqa: E402
from actors.discovery import DiscoveredNode, watch_consul  # noqa: E402
from comfy_service.agents.binaries import agent_binary  # noqa: E402
from comfy_service.agents.consul_agent import ConsulAgent  # noqa: E402
from comfy_service.open_files import raise_open_files_limit  # noqa: E402
from comfy_service.polling import wait_until  # noqa: E402
from scripts.bench_scale import cpu_seconds, machine_busy, rss_mib  # noqa: E402
from tests.support.comfy_client import txt2img  # noqa: E402
from tests.support.processes import FarmProcess, ManagedProcess  # noqa: E402

FLEETS = (16, 64, 256, 1000)
WATCHERS = 4
STEPS, STEP_MS = 2, 1000
TASK_S = STEPS * STEP_MS / 1000
WARMUP_S, WINDOW_S = 10.0, 20.0
SERVICE = "comfyui"
TELEMETRY = 'telemetry {\n  prometheus_retention_time = "600s"\n  disable_hostname = true\n}\n'
COUNT = re.compile(r'^consul_api_http_count\{method="(\w+)",path="(\w+)"\} ([0-9.e+]+)$', re.M)

HEADER = ("| nodes | Raft writes/s | catalog syncs/s | re-registrations/s | TTL updates/s "
          "| KV reads/s | returns/s per watcher | KiB/s per watcher (wire; JSON) "
          "| listener calls/s | cores: Consul, sidecar farm, node farm, load+watchers; machine "
          "| RSS: Consul, sidecar farm | sidecar threads, fds | what limited it |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def consul_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/v1/agent/metrics", params={"format": "prometheus"},
                     timeout=30).text
    found = {"raft": 0.0, "catalog": 0.0, "register": 0.0, "ttl": 0.0, "kv": 0.0}
    for line in text.splitlines():
        if line.startswith("consul_raft_apply "):
            found["raft"] = float(line.split()[1])
        elif line.startswith("consul_catalog_register_count "):
            found["catalog"] = float(line.split()[1])
    for method, path, value in COUNT.findall(text):
        if method == "PUT" and path == "v1_agent_service_register":
            found["register"] += float(value)
        elif method == "PUT" and path.startswith(("v1_agent_check_pass", "v1_agent_check_fail")):
            found["ttl"] += float(value)
        elif method == "GET" and path.startswith("v1_kv"):
            found["kv"] += float(value)
    return found


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads_of(pid: int) -> int:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


class Gpu:
    """A GPU readings file every sidecar instance reads, its load swinging every second."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.write(5.0)

    def write(self, util: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "uuid": "GPU-bench", "name": "NVIDIA H100 80GB HBM3", "index": 0,
            "utilization_pct": util, "memory_used_mb": 20000.0 + util * 400,
            "memory_total_mb": 81559.0, "temperature_c": 40.0, "power_w": 300.0}))
        tmp.replace(self.path)

    async def swing(self) -> None:
        if os.environ.get("BENCH_GPU_SWING", "1") == "0":  # a steady GPU: load never moves
            return
        for util in itertools.cycle((95.0, 5.0)):
            await asyncio.sleep(1.0)
            self.write(util)


class Traffic:
    """Prompts on every node, the watchers and their counts: one event loop in a thread."""

    def __init__(self, consul_url: str, urls: list[str], gpu: Gpu) -> None:
        self.consul_url, self.urls, self.gpu = consul_url, urls, gpu
        self.returns = [0] * (WATCHERS - 1)
        self.wire = [0] * (WATCHERS - 1)
        self.json = [0] * (WATCHERS - 1)
        self.listener_calls = 0
        self.posted = self.post_errors = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._main: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self.thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self.loop)  # type: ignore[assignment]

    def stop(self) -> None:
        if self._main is not None:
            self.loop.call_soon_threadsafe(self._main.cancel)  # type: ignore[attr-defined]
            time.sleep(1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def snapshot(self) -> tuple[int, int, int, int]:
        return sum(self.returns), sum(self.wire), sum(self.json), self.listener_calls

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.urls) + 16,
                              max_keepalive_connections=len(self.urls) + 16)
        async with httpx.AsyncClient(limits=limits, timeout=60) as farm, \
                httpx.AsyncClient(timeout=60) as consul:
            seeds = itertools.count()
            jobs = [self._feed(farm, url, i, seeds) for i, url in enumerate(self.urls)]
            jobs += [self._watch(consul, k) for k in range(WATCHERS - 1)]
            jobs += [watch_consul(self.consul_url, SERVICE, None, self._listener),
                     self.gpu.swing()]
            await asyncio.gather(*jobs)

    async def _listener(self, nodes: list[DiscoveredNode]) -> None:
        self.listener_calls += 1

    async def _feed(self, client: httpx.AsyncClient, url: str, i: int,
                    seeds: itertools.count[int]) -> None:
        """Two prompts to start, then one per task time: about one running, one waiting."""
        await asyncio.sleep(TASK_S * i / len(self.urls))  # staggered, like real arrivals
        for n in itertools.count():
            try:
                await client.post(f"{url}/prompt",
                                  json={"prompt": txt2img(steps=STEPS, width=64, height=64,
                                                          seed=next(seeds))})
                self.posted += 1
            except httpx.HTTPError:
                self.post_errors += 1
            if n >= 1:
                await asyncio.sleep(TASK_S)

    async def _watch(self, client: httpx.AsyncClient, k: int) -> None:
        """What the worker does, minus parsing: index, wait=30s, the whole answer each time."""
        index: str | None = None
        pace = getattr(discovery, "MIN_QUERY_INTERVAL_S", 0.0)  # 0 before it had one
        while True:
            asked_at = time.monotonic()
            params = {"wait": "30s", **({"index": index} if index else {})}
            async with client.stream("GET", f"{self.consul_url}/v1/health/service/{SERVICE}",
                                     params=params,
                                     headers={"Accept-Encoding": "gzip, deflate"}) as answer:
                body = await answer.aread()
                self.wire[k] += answer.num_bytes_downloaded
            self.json[k] += len(body)
            self.returns[k] += 1
            index = answer.headers.get("X-Consul-Index")
            await asyncio.sleep(max(0.0, asked_at + pace - time.monotonic()))


def limit(shares: dict[str, float], machine: float) -> str:
    cores = os.cpu_count() or 1
    top = max(shares, key=lambda k: shares[k])
    if shares[top] >= 0.9:
        return f"{top} at {shares[top]:.0%} of a core"
    if machine >= 0.9 * cores:
        return f"the machine: {machine:.2f} of {cores} cores busy (most: {top})"
    return f"nothing saturated ({machine:.2f} of {cores} cores busy)"


def point(root: pathlib.Path, nodes: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    hcl = TELEMETRY
    if os.environ.get("BENCH_CONSUL_MAX_CONNS"):  # Consul's default: 200 per client address
        hcl += f"limits {{\n  http_max_conns_per_client = {os.environ['BENCH_CONSUL_MAX_CONNS']}\n}}\n"
    agent = ConsulAgent(agent_binary("consul"), root / "consul", extra_hcl=hcl)
    agent.start()
    farm: FarmProcess | None = None
    sidecars: ManagedProcess | None = None
    traffic: Traffic | None = None
    try:
        farm = FarmProcess(root / "farm", nodes, step_ms=STEP_MS, start_timeout=300)
        gpu = Gpu(root / "gpu.json")
        sidecars = ManagedProcess("sidecars", [
            sys.executable, "-m", "comfy_service.cli", "sidecar"], root / "sidecars.log", env={
            "COMFYUI_URLS": ",".join(farm.urls), "CONSUL_HTTP_ADDR": agent.url,
            "CONSUL_SERVICE_NAME": SERVICE, "GPU_READINGS_FILE": str(gpu.path),
            "NODE_HOSTNAME": "bench", "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json",
            "SIDECAR_TTL_S": os.environ.get("BENCH_SIDECAR_TTL_S", "5")})

        def all_passing() -> bool:
            if not sidecars.alive():
                errors = [line for line in sidecars.log_path.read_text().splitlines()
                          if '"level": "error"' in line][:3]
                raise RuntimeError("the sidecar farm exited:\n" + "\n".join(errors))
            answer = httpx.get(f"{agent.url}/v1/health/service/{SERVICE}",
                               params={"passing": "true"}, timeout=30)
            if answer.status_code != 200:  # e.g. a 500 while Consul is swamped: ask again
                print(f"# Consul answered {answer.status_code}: {answer.text[:200]}",
                      file=sys.stderr)
                return False
            return len(answer.json()) >= 0.95 * nodes
        # 95 %: on a saturated machine some probes time out and their nodes flap
        try:
            wait_until(all_passing, 180, f"{nodes} passing services", interval=1)
        except TimeoutError:  # measure anyway: the passing count is printed with the row
            print(f"# {nodes} nodes: under 95 % passing after 180 s", file=sys.stderr)
        traffic = Traffic(agent.url, farm.urls, gpu)
        traffic.start()
        time.sleep(WARMUP_S)
        procs: dict[str, Callable[[], float]] = {
            "Consul": lambda: cpu_seconds(agent.proc.pid),  # type: ignore[union-attr]
            "sidecar farm": lambda: cpu_seconds(sidecars.proc.pid),
            "node farm": lambda: cpu_seconds(farm.proc.pid),  # type: ignore[union-attr]
            "load+watchers": lambda: cpu_seconds(os.getpid()), "machine": machine_busy}

        def snapshot() -> tuple[float, dict[str, float], dict[str, float], tuple[int, ...]]:
            return (time.time(), {k: f() for k, f in procs.items()},
                    consul_counters(agent.url), traffic.snapshot())  # type: ignore[union-attr]
        t0, cpu0, con0, w0 = snapshot()
        time.sleep(WINDOW_S)
        t1, cpu1, con1, w1 = snapshot()
        passing = len(httpx.get(f"{agent.url}/v1/health/service/{SERVICE}",
                                params={"passing": "true"}, timeout=60).json())
        print(f"# {nodes} nodes: {passing} passing at the window's end", file=sys.stderr)
        rss = (rss_mib(agent.proc.pid), rss_mib(sidecars.proc.pid))  # type: ignore[union-attr]
        threads, fds = threads_of(sidecars.proc.pid), fds_of(sidecars.proc.pid)
        posted, errors = traffic.posted, traffic.post_errors
        log_text = sidecars.log_path.read_text(errors="replace")
        events = {name: log_text.count(f'"event": "{name}"') for name in (
            "sidecar.probe_failed", "sidecar.consul_unreachable", "sidecar.register_failed")}
        print(f"# {nodes} nodes: sidecar events over the run: {events}", file=sys.stderr)
    finally:
        if traffic is not None:
            traffic.stop()
        if sidecars is not None:
            sidecars.stop(60)
        if farm is not None:
            farm.stop()
        agent.stop()
    window = t1 - t0
    rate = {k: (con1[k] - con0[k]) / window for k in con0}
    shares = {k: (cpu1[k] - cpu0[k]) / window for k in cpu0}
    machine = shares.pop("machine")
    k = WATCHERS - 1
    returns, wire, decoded, calls = ((b - a) / window for a, b in zip(w0, w1, strict=True))
    print(f"# {nodes} nodes: {posted} prompts posted, {errors} post errors", file=sys.stderr)
    cores = ", ".join(f"{shares[name]:.2f}" for name in
                      ("Consul", "sidecar farm", "node farm", "load+watchers"))
    return (f"| {nodes} | {rate['raft']:.1f} | {rate['catalog']:.1f} | {rate['register']:.1f} "
            f"| {rate['ttl']:.0f} | {rate['kv']:.0f} | {returns / k:.2f} "
            f"| {wire / k / 1024:.0f}; {decoded / k / 1024:.0f} | {calls:.2f} "
            f"| {cores}; machine {machine:.2f} | {rss[0]:.0f} MiB, {rss[1]:.0f} MiB "
            f"| {threads}, {fds} | {limit(shares, machine)} |")


def bench_consul(root: pathlib.Path, fleets: tuple[int, ...] = FLEETS) -> list[str]:
    raise_open_files_limit()  # the watchers and the load generator hold a socket per node
    rows = []
    for nodes in fleets:
        rows.append(point(root / str(nodes), nodes))
        print(rows[-1], file=sys.stderr, flush=True)  # progress: a point takes a minute
    return rows


if __name__ == "__main__":
    import tempfile
    fleets = tuple(int(n) for n in sys.argv[1].split(",")) if len(sys.argv) > 1 else FLEETS
    with tempfile.TemporaryDirectory(prefix="cs-bench-consul-") as tmp:
        print(HEADER)
        print("\n".join(bench_consul(pathlib.Path(tmp), fleets)), flush=True)
