"""`make bench`: speed figures of the service on this machine (a report, never a test).

  submit   accepted submits/s and latency of POST /api/v1/generate (gateway + Redis)
  fleet    efficiency and per-node idle gaps with N simulated nodes, against a naive client
  recover  time from a SIGKILLed worker to another worker adopting its running task
  metrics  the gateway's submit rate with and without its metrics (bench_metrics)
  store    an output copied from a node into the store and read back, local vs S3 (bench_store)
  speeds   nodes of speeds 1x/2x/4x through Consul, NODE_WEIGHT set vs learned speeds
  sse      Server-Sent Event streams held open on one gateway process, with its memory
  webhooks the submit latency a webhook adds, and task end to its event delivered (bench_webhooks)
  mesh     nodes of speeds 1x/2x/4x through Consul (makespan vs ideal and round-robin), and
           failover time from a killed or hung node to its task running elsewhere
  autoscale the Nomad Autoscaler on a local cluster: a burst to the first task on a new node,
           scale-out vs a fixed fleet of 3, back at min (bench_autoscale)
  dispatch one dispatch decision as the fleet grows (bench_dispatch)
  scale    a node farm of 16 to 1,000 nodes behind the service, 1 and 2 workers (bench_scale)
  consul   the Consul side of 16 to 1,000 nodes: a sidecar farm, writes, watchers (bench_consul)

Run: .venv/bin/python scripts/bench.py [submit|fleet|recover|all]. Prints Markdown rows for
docs/benchmarks.md. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import json
import os
import pathlib
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import ManagedProcess, RedisProcess, SimNodeProcess, free_port, wait_until  # noqa: E402
from tests.support.service import Stack, txt2img_body  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


# --- submit path ---------------------------------------------------------------------------------
async def _paced(url: str, rate: float, seconds: float, connections: int = 64) -> list[float]:
    """Open loop: requests are due at a fixed rate whatever the answers do; latency counts from
    when a request was due (so a slow server is not hidden by a waiting client). Plain asyncio
    streams with pre-built requests keep the client's own cost far below the server's."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps(txt2img_body(steps=1)).encode()
    request = (f"POST /api/v1/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    due: asyncio.Queue[float] = asyncio.Queue()
    latencies: list[float] = []
    total = int(rate * seconds)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while len(latencies) < total:
                try:
                    scheduled = await asyncio.wait_for(due.get(), 1.0)
                except TimeoutError:
                    continue
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                if b" 202 " not in head.split(b"\r\n", 1)[0]:
                    raise RuntimeError(head.decode(errors="replace"))
                latencies.append(time.perf_counter() - scheduled)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(start + i / rate)
    await asyncio.wait_for(asyncio.gather(*workers), seconds + 60)
    return latencies


def _wrk(url: str, root: pathlib.Path, connections: int, seconds: int) -> tuple[float, str, str]:
    """Closed-loop load from wrk (C, cheap on the client side): (requests/s, p50, p99)."""
    script = root / "post.lua"
    body = json.dumps(txt2img_body(steps=1)).replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(f'wrk.method = "POST"\nwrk.body = "{body}"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), f"{url}/api/v1/generate"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    return rate, p50, p99


def bench_submit(root: pathlib.Path) -> list[str]:
    rows = []
    for workers in (1, 2):
        redis = RedisProcess(root / f"redis-submit{workers}")
        port = free_port()
        gateway = ManagedProcess("gateway", [sys.executable, "-m", "comfy_service.cli",
                                             "gateway"], root / f"gateway{workers}.log",
                                 env={"REDIS_URL": redis.url, "API_PORT": str(port),
                                      "LOG_LEVEL": "WARNING", "API_WORKERS": str(workers)})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _ok(f"{url}/healthz"), 30, "gateway")  # noqa: B023
            _wrk(url, root, 8, 2)  # warm-up
            rate, p50, p99 = _wrk(url, root, 32, 10)
            paced = asyncio.run(_paced(url, 500, 10))
        finally:
            gateway.stop()
            redis.stop()
        rows += [
            f"| closed loop, wrk 32 connections, 10 s, {workers} gateway process(es) | "
            f"{rate:.0f} /s | p50 {p50}, p99 {p99} |",
            f"| open loop at 500/s for 10 s ({len(paced)} requests), {workers} gateway "
            f"process(es) | 500 /s offered | p50 {percentile(paced, 50) * 1000:.1f} ms, "
            f"p99 {percentile(paced, 99) * 1000:.1f} ms |",
        ]
    return rows


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- fleet ----------------------------------------------------------------------------------------
STEPS, STEP_MS = 10, 20


def _node_timeline(sim_url: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of each prompt the node ran, from its own history."""
    spans = []
    for entry in httpx.get(f"{sim_url}/history", timeout=10).json().values():
        stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
        spans.append((stamps["execution_start"] / 1000, stamps["execution_success"] / 1000))
    return sorted(spans)


def _gaps(spans: list[tuple[float, float]]) -> list[float]:
    return [max(0.0, spans[i + 1][0] - spans[i][1]) for i in range(len(spans) - 1)]


def bench_fleet(root: pathlib.Path, nodes: int, tasks: int) -> tuple[str, dict[str, float]]:
    stack = Stack(root / f"fleet{nodes}", nodes=nodes, step_ms=STEP_MS,
                  env={"LOG_LEVEL": "WARNING"})
    try:
        started = time.perf_counter()
        ids = [stack.submit(txt2img_body(steps=STEPS, seed=i)) for i in range(tasks)]
        for task_id in ids:
            assert stack.wait_task(task_id, timeout=600)["status"] == "succeeded"
        wall = time.perf_counter() - started
        spans = [_node_timeline(s.url) for s in stack.sims]
    finally:
        stack.stop()
    busy = sum(end - start for node in spans for start, end in node)
    nominal = tasks * STEPS * STEP_MS / 1000
    gaps = [g for node in spans for g in _gaps(node)]
    figures = {"wall": wall, "efficiency": nominal / nodes / wall,
               "busy_efficiency": busy / nodes / wall,
               "gap_p50": percentile(gaps, 50) * 1000 if gaps else 0.0,
               "gap_p95": percentile(gaps, 95) * 1000 if gaps else 0.0,
               "prompt_s": busy / tasks}
    row = (f"| service, {nodes} node(s), {tasks} tasks | {wall:.2f} s | "
           f"{figures['efficiency']:.3f} | {figures['busy_efficiency']:.3f} | "
           f"{figures['gap_p50']:.1f} / {figures['gap_p95']:.1f} ms |")
    return row, figures


async def _naive_node(sim_url: str, count: int, seed0: int) -> None:
    """What most wrappers do: submit one prompt, poll /history each second, download, repeat."""
    from comfy_service.templates import load_templates, render, resolve
    template = load_templates()["txt2img"]
    async with httpx.AsyncClient(base_url=sim_url, timeout=10) as client:
        for i in range(count):
            values, _ = resolve(template, {"prompt": "a lighthouse", "width": 256, "height": 256,
                                           "steps": STEPS, "seed": seed0 + i}, lambda n: 0)
            prompt_id = (await client.post("/prompt", json={
                "prompt": render(template, values, "naive")})).json()["prompt_id"]
            while True:
                await asyncio.sleep(1.0)
                entry = (await client.get(f"/history/{prompt_id}")).json().get(prompt_id)
                if entry:
                    break
            image = entry["outputs"]["9"]["images"][0]
            await client.get("/view", params={"filename": image["filename"]})


def bench_naive(root: pathlib.Path, nodes: int, tasks: int) -> str:
    sims = [SimNodeProcess(root / f"naive{i}", step_ms=STEP_MS) for i in range(nodes)]
    try:
        started = time.perf_counter()

        async def all_nodes() -> None:
            await asyncio.gather(*(_naive_node(s.url, tasks // nodes, 1000 * i)
                                   for i, s in enumerate(sims)))
        asyncio.run(all_nodes())
        wall = time.perf_counter() - started
        spans = [_node_timeline(s.url) for s in sims]
    finally:
        for sim in sims:
            sim.stop()
    busy = sum(end - start for node in spans for start, end in node)
    gaps = [g for node in spans for g in _gaps(node)]
    nominal = tasks * STEPS * STEP_MS / 1000
    return (f"| naive client (submit, poll /history each 1 s), {nodes} node(s), {tasks} tasks | "
            f"{wall:.2f} s | {nominal / nodes / wall:.3f} | {busy / nodes / wall:.3f} | "
            f"{percentile(gaps, 50) * 1000:.1f} / {percentile(gaps, 95) * 1000:.1f} ms |")


# --- recovery -------------------------------------------------------------------------------------
def bench_recover(root: pathlib.Path, runs: int = 3) -> list[str]:
    rows = []
    for run in range(runs):
        stack = Stack(root / f"recover{run}", nodes=1, step_ms=50, env={"LEASE_TTL_S": "5"})
        try:
            task_id = stack.submit(txt2img_body(steps=150, seed=run))
            stack.wait_task(task_id, ("running",))
            stack.start_worker()
            killed = time.time()
            stack.workers[0].proc.send_signal(signal.SIGKILL)
            log, watched = stack.root / "worker1.log", task_id
            adopted = wait_until(lambda: _adoption_time(log, watched), 60, "adoption")  # noqa: B023
            assert stack.wait_task(task_id, timeout=60)["status"] == "succeeded"
            rows.append(adopted - killed)
        finally:
            stack.stop()
    return [f"| worker SIGKILLed mid-task (lease 5 s), {runs} runs | "
            f"{', '.join(f'{r:.2f}' for r in rows)} s to adoption | "
            f"mean {statistics.mean(rows):.2f} s |"]


# --- mesh -----------------------------------------------------------------------------------------
def _consul(root: pathlib.Path) -> Any:
    from comfy_service.agents.binaries import agent_binary
    from comfy_service.agents.consul_agent import ConsulAgent
    agent = ConsulAgent(agent_binary("consul"), root / "consul")
    agent.start()
    return agent


def bench_heterogeneous(root: pathlib.Path, tasks: int = 120, steps: int = 10,
                        configured: bool = True) -> list[str]:
    """Nodes of speed 1x/2x/4x; `configured`: their sidecars say so (NODE_WEIGHT), else the
    worker learns it from their prompt times (actors/speeds.py)."""
    from tests.support.mesh import Mesh
    consul = _consul(root)
    step_ms = [40, 20, 10]  # speeds 1x, 2x, 4x
    mesh = Mesh(root / f"hetero-{configured}", consul.url, nodes=3,
                env={"LOG_LEVEL": "WARNING"},
                weights=[1.0, 2.0, 4.0] if configured else None)
    try:
        for sim, ms in zip(mesh.stack.sims, step_ms, strict=True):
            httpx.post(f"{sim.url}/sim/faults", json={"step_ms": ms}).raise_for_status()
        started = time.perf_counter()
        ids = [mesh.stack.submit(txt2img_body(steps=steps, seed=i)) for i in range(tasks)]
        done = [mesh.stack.wait_task(t, timeout=600) for t in ids]
        wall = time.perf_counter() - started
        per_node = [sum(1 for t in done if mesh.node_of(t) == i) for i in range(3)]
        spans = [_node_timeline(s.url) for s in mesh.stack.sims]
        learned = {n["name"].rsplit("-", 1)[1]: (n.get("speed"), n.get("speed_source"))
                   for n in mesh.stack.http.get("/api/v1/nodes").json()["nodes"]}
        speeds = [learned.get(str(sim.port), (None, None)) for sim in mesh.stack.sims]
    finally:
        mesh.stop()
        consul.stop()
    rates = [1000 / (steps * ms) for ms in step_ms]  # tasks per second per node, nominal
    ideal = tasks / sum(rates)
    # The same with each node's real time per prompt (its history): sampling plus the
    # simulator's own decode and PNG encoding.
    real_rates = [len(s) / sum(end - start for start, end in s) for s in spans if s]
    ideal_real = tasks / sum(real_rates)
    round_robin = max(tasks / 3 / r for r in rates)
    how = ("NODE_WEIGHT 1/2/4" if configured else
           "nothing configured; learned " + "/".join(f"{v:g}" for v, _ in speeds if v))
    return [f"| {tasks} tasks on nodes of speed 1x/2x/4x (steps x 40/20/10 ms), {how} | "
            f"{wall:.2f} s | {ideal:.2f} s nominal ({wall / ideal:.3f}x), {ideal_real:.2f} s "
            f"with real prompt times ({wall / ideal_real:.3f}x) | {round_robin:.2f} s "
            f"({round_robin / wall:.2f}x slower than us) | {per_node} |"]


def bench_failover(root: pathlib.Path) -> list[str]:
    from tests.support.mesh import Mesh
    consul = _consul(root)
    rows = []
    try:
        for how in ("killed", "hung"):
            mesh = Mesh(root / f"failover-{how}", consul.url, nodes=2, step_ms=50,
                        gpu_utils=[5.0, 50.0], env={"LOG_LEVEL": "WARNING"})
            try:
                task_id = mesh.stack.submit(txt2img_body(steps=150, seed=1))
                first = mesh.stack.wait_task(task_id, ("running",))
                victim = mesh.stack.sims[mesh.node_of(first)]
                struck = time.perf_counter()
                if how == "killed":
                    victim.kill()
                else:
                    httpx.post(f"{victim.url}/sim/faults", json={"hang": True}).raise_for_status()
                wait_until(lambda: (t := mesh.stack.task(task_id))["attempts"] == 2  # noqa: B023
                           and t["status"] == "running", 60, "the task to run elsewhere",
                           interval=0.02)
                rows.append(f"| node {how} (sidecar TTL 2 s, probes every 0.5 s) | "
                            f"{time.perf_counter() - struck:.2f} s |")
                if how == "hung":
                    httpx.post(f"{victim.url}/sim/faults", json={"hang": False}, timeout=5)
            finally:
                mesh.stop()
    finally:
        consul.stop()
    return rows


def bench_nomad(root: pathlib.Path) -> list[str]:
    """Deployment through Nomad: `nomad job run` to the first task served; `nomad alloc stop`
    to the node drained, replaced, and its replacement taking work."""
    from comfy_service.nomad_stack import NomadCluster, run_jobs
    redis = RedisProcess(root / "nomad-redis")
    cluster = NomadCluster(root / "nomad", dict(os.environ))
    rows = []
    try:
        cluster.start_agents()
        assert cluster.nomad is not None and cluster.consul is not None
        started = time.perf_counter()
        gateway = run_jobs(cluster, redis.url, free_port(), 2, 50, root / "nomad-out", "")
        up = time.perf_counter() - started

        def submit(steps: int) -> str:
            answer = httpx.post(f"{gateway}/api/v1/generate", json=txt2img_body(steps=steps),
                                timeout=10)
            answer.raise_for_status()
            return str(answer.json()["task_id"])

        def task(task_id: str) -> dict[str, Any]:
            return dict(httpx.get(f"{gateway}/api/v1/tasks/{task_id}", timeout=10).json())
        first = submit(4)
        wait_until(lambda: task(first)["status"] == "succeeded", 60, "the first task")
        rows.append(f"| `nomad job run` (both jobs) to 2 sidecars passing and the gateway "
                    f"ready | {up:.1f} s |")
        rows.append(f"| `nomad job run` to the first task served (4 steps) | "
                    f"{time.perf_counter() - started:.1f} s |")

        def passing() -> set[str]:
            entries = httpx.get(f"{cluster.consul.url}/v1/health/service/comfyui",  # type: ignore[union-attr]
                                params={"passing": "true"}, timeout=10).json()
            return {entry["Service"]["ID"] for entry in entries}
        before = passing()
        backlog = [submit(20) for _ in range(24)]  # 1 s each: a queue that outlasts the stop
        victim_node = wait_until(lambda: next((t["node"] for t in map(task, backlog)
                                               if t["status"] == "running"), None), 60, "work")
        allocs = httpx.get(f"{cluster.nomad.url}/v1/job/comfyui/allocations", timeout=10).json()
        port = victim_node.rsplit("-", 1)[1]
        victim = next(a["ID"] for a in allocs if a["ClientStatus"] == "running" and any(
            str(p["Value"]) == port for p in httpx.get(
                f"{cluster.nomad.url}/v1/allocation/{a['ID']}", timeout=10).json()
            ["AllocatedResources"]["Shared"]["Ports"]))
        struck = time.perf_counter()
        cluster.nomad_cli("alloc", "stop", "-detach", victim)
        wait_until(lambda: victim_node not in passing(), 120, "the drain to start", interval=0.02)
        draining = time.perf_counter() - struck
        new = wait_until(lambda: (now := passing() - before) and now, 120, "a replacement",
                         interval=0.05)
        replaced = time.perf_counter() - struck
        wait_until(lambda: any(t["node"] in new and t["status"] != "queued"
                               for t in map(task, backlog)), 120, "work on the replacement",
                   interval=0.05)
        serving = time.perf_counter() - struck
        records = wait_until(lambda: (r := [task(t) for t in backlog]) and all(
            x["status"] == "succeeded" for x in r) and r, 240, "the backlog")
        drained = max(datetime.datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00"))
                      .timestamp() for r in records if r["node"] == victim_node)
        rows.append(f"| `nomad alloc stop` to the node out of dispatch (Consul maintenance) | "
                    f"{draining:.2f} s |")
        rows.append(f"| `nomad alloc stop` to the replacement passing in Consul | {replaced:.1f} s |")
        rows.append(f"| `nomad alloc stop` to the replacement running the backlog's tasks | "
                    f"{serving:.1f} s |")
        rows.append(f"| `nomad alloc stop` to the stopped node's last prompt finished (drained, "
                    f"attempts all 1: {all(r['attempts'] == 1 for r in records)}) | "
                    f"{drained - (time.time() - (time.perf_counter() - struck)):.1f} s |")
    finally:
        cluster.stop()
        redis.stop()
    return rows


def _adoption_time(log: pathlib.Path, task_id: str) -> float | None:
    import datetime as dt
    for line in log.read_text().splitlines() if log.exists() else []:
        if '"task.adopted"' in line and task_id in line:
            stamp = json.loads(line)["ts"].replace("Z", "+00:00")
            return dt.datetime.fromisoformat(stamp).timestamp()
    return None


MODULE_BENCHES = ("metrics", "store", "sse", "webhooks", "packing", "autoscale", "dispatch", "scale",
                  "consul")


def main(argv: list[str]) -> int:
    which = argv[0] if argv else "all"
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or ''} "
          f"{_cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        root = pathlib.Path(tmp)
        if which in ("submit", "all"):
            print("\n| submit path | rate | latency |\n| --- | --- | --- |")
            print("\n".join(bench_submit(root)), flush=True)
        if which in ("fleet", "all"):
            print("\n| fleet | wall | efficiency (nominal) | efficiency (node busy) | "
                  "idle gap p50 / p95 |\n| --- | --- | --- | --- | --- |")
            for nodes in (1, 4, 16):
                print(bench_fleet(root, nodes, 200)[0], flush=True)
            print(bench_naive(root, 4, 40), flush=True)
        if which in ("mesh", "all"):
            print("\n| heterogeneous nodes | wall | ideal | round-robin | tasks per node |\n"
                  "| --- | --- | --- | --- | --- |")
            print("\n".join(bench_heterogeneous(root)), flush=True)
            print("\n".join(bench_heterogeneous(root, configured=False)), flush=True)
            print("\n| failover | from the fault to the task running on another node |\n"
                  "| --- | --- |")
            print("\n".join(bench_failover(root)), flush=True)
        if which == "speeds":  # learned speeds vs configured weights, one run
            print("\n| heterogeneous nodes | wall | ideal | round-robin | tasks per node |\n"
                  "| --- | --- | --- | --- | --- |")
            for configured in (True, False):
                print("\n".join(bench_heterogeneous(root, configured=configured)), flush=True)
        if which in ("nomad", "all"):
            print("\n| Nomad deployment (2 simulated nodes, raw_exec) | time |\n| --- | --- |")
            print("\n".join(bench_nomad(root)), flush=True)
        for name in MODULE_BENCHES:  # scripts/bench_<name>.py: HEADER and bench_<name>(root)
            if which in (name, "all"):
                module = importlib.import_module(f"scripts.bench_{name}")
                print("\n" + module.HEADER)
                print("\n".join(getattr(module, f"bench_{name}")(root)), flush=True)
        if which in ("recover", "all"):
            print("\n| recovery | measured | summary |\n| --- | --- | --- |")
            print("\n".join(bench_recover(root)), flush=True)
    return 0


def _cpu_count() -> int:
    import os
    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
