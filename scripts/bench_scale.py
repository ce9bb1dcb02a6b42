"""`make bench BENCH=scale`: how far one worker drives a fleet, with N nodes in one node farm.

For N = 16, 64, 256 and 1,000 simulated nodes in one `comfyui_sim --nodes N --cheap-images`
process, the service (gateway, Redis, static node list, 1 worker; `scripts/bench_scale.py
16,64 1,2 20` picks fleets, worker counts and the task length in seconds) gets a backlog of
txt2img tasks of 2 steps, 2 s in all by default: 1,000 nodes ask for 500 binds/s, more than a
worker does here, while a task costs the farm a few ms (one timer per step, a 1-pixel PNG).
The workers share the nodes (each follows its own part). The backlog is admitted, every slot
filled once, and a warm-up passed (a task's length, at least 10 s) before a
warm-up, then a fixed window measures:

  efficiency     prompts finished on the nodes in the window / (N x window / 2 s)
  binds/s        the worker's comfy_bind_decisions_total{outcome="bound"} delta / window
  CPU per task   the workers' utime + stime delta (/proc/<pid>/stat) / prompts finished
  Redis / task   INFO commandstats total calls delta / prompts finished
  sockets        /proc/<worker pid>/fd entries that are sockets, at the window's end
  worker RSS     VmRSS of the (largest) worker at the window's end
  failover       after the window, a node running a task loses its WebSocket for good: time
                 until that task runs on another node (the fleet still loaded)
  cores busy     each process's CPU seconds / window (1.0 = one core busy), and the whole
                 machine's (/proc/stat), which shows what other processes took

and says what limited the point from those shares. Prints Markdown rows.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import sys
import time

import httpx
import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfy_service import constants as c  # noqa: E402
from comfy_service.polling import wait_until  # noqa: E402
from tests.support.processes import FarmProcess, ManagedProcess, free_port  # noqa: E402
from tests.support.service import Stack, txt2img_body  # noqa: E402

FLEETS = (16, 64, 256, 1000)
WORKERS = (1,)
STEPS = 2
TASK_S = 2.0               # a task holds its node this long (STEPS steps); the third argument
WARMUP_S, WINDOW_S = 10.0, 30.0  # at least; longer tasks get a task's length and 3 tasks
BATCH = 100
MAX_BACKLOG = 8000
BOUND = re.compile(rb'^comfy\w*bind_decisions_total\{outcome="bound"\} ([0-9.e+]+)$', re.M)

HEADER = ("| nodes (one farm) | task | workers | efficiency | binds/s | worker CPU per task | "
          "Redis cmds / task | sockets / worker | worker RSS | failover | "
          "cores busy: worker(s), farm, gateway, Redis; machine | what limited it |\n"
          + "| --- " * 12 + "|")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockets_of(pid: int) -> int:
    count = 0
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


def rss_mib(pid: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def redis_calls(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = sock.recv(65536)
        head = data.index(b"\r\n")  # a bulk string: $<length>, CRLF, the text, CRLF
        while len(data) < head + 2 + int(data[1:head]) + 2:
            data += sock.recv(65536)
    return sum(int(n) for n in re.findall(rb"calls=(\d+)", data))


def bound(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content
    return sum(float(n) for n in BOUND.findall(text))


def finished_between(urls: list[str], start: float, end: float) -> int:
    """Prompts whose execution_success, by the node's own clock, falls in [start, end)."""
    done = 0
    with httpx.Client(timeout=30) as client:
        for url in urls:
            for entry in client.get(f"{url}/history").json().values():
                for kind, data in entry["status"]["messages"]:
                    if kind == "execution_success" and start <= data["timestamp"] / 1000 < end:
                        done += 1
    return done


def _submit(stack: Stack, count: int, seed0: int) -> None:
    for first in range(0, count, BATCH):
        answer = stack.http.post("/api/v1/batches", timeout=60, json={"requests": [
            txt2img_body(steps=STEPS, seed=seed0 + i) for i in range(first, first + BATCH)]})
        answer.raise_for_status()


def failover_s(stack: Stack, urls: list[str]) -> float:
    """A node running a task loses its WebSocket for good (the simulator's refuse_ws fault: a
    dead ComfyUI, as the workers see it): seconds until that task runs on another node."""
    with httpx.Client(timeout=10) as client:
        for url in urls:
            running = client.get(f"{url}/queue").json()["queue_running"]
            if running:
                task_id = running[0][1]
                break
        else:
            return float("nan")
        struck = time.perf_counter()
        client.post(f"{url}/sim/faults", json={"refuse_ws": True}).raise_for_status()

    def elsewhere() -> bool:
        record = stack.task(task_id)
        return bool(record["attempts"] >= 2 and record["status"] in ("running", "succeeded"))
    wait_until(elsewhere, 120, f"task {task_id} to run on another node", interval=0.02)
    return time.perf_counter() - struck


def machine_busy() -> float:
    """CPU seconds all processes on this machine have used (/proc/stat, idle and iowait out)."""
    ticks = [int(n) for n in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _limit(shares: dict[str, float], machine: float, workers: int, efficiency: float) -> str:
    if efficiency >= 0.95:
        return "the fleet (nodes busy)"
    per_worker = shares["worker"] / workers
    if per_worker >= 0.85:
        return (f"the worker process at {per_worker:.0%} of a core" if workers == 1 else
                f"the {workers} worker processes, {per_worker:.0%} of a core each")
    if shares["farm"] >= 0.85:
        return f"the farm process at {shares['farm']:.0%} of a core"
    cores = os.cpu_count() or 1
    if machine >= 0.9 * cores:
        return (f"the machine: {machine:.2f} of {cores} cores busy, "
                f"{max(0.0, machine - sum(shares.values())):.2f} of them other processes")
    return f"not CPU ({machine:.2f} of {cores} cores busy): waiting somewhere"


def point(root: pathlib.Path, nodes: int, workers: int, task_s: float = TASK_S) -> str:
    warmup_s, window_s = max(WARMUP_S, task_s), max(WINDOW_S, 3 * task_s)
    farm = FarmProcess(root / f"farm{nodes}", nodes, step_ms=task_s * 1000 / STEPS,
                       start_timeout=300)
    stack: Stack | None = None
    try:
        stack = Stack(root / f"stack{nodes}-{workers}", nodes=0, workers=0, env={
            "COMFYUI_URLS": ",".join(farm.urls), "LOG_LEVEL": "WARNING",
            "LEASE_TTL_S": "5"})  # the default (the test stacks' 2 s is for quick tests)
        metric_ports = [free_port() for _ in range(workers)]
        for port in metric_ports:
            stack.start_worker({"WORKER_METRICS_PORT": str(port)})
        stack.wait_nodes_healthy(nodes, timeout=300)
        nominal = nodes / task_s  # tasks per second the fleet can run
        # A backlog for the whole run at the nominal rate, capped: submitting is gateway CPU
        # taken from the same 2 cores, and one worker binds far fewer than 500/s here.
        _submit(stack, min(int(nominal * (warmup_s + window_s) * 1.2), MAX_BACKLOG)
                + 2 * nodes + BATCH, 0)
        # Admission (the workers' Dramatiq actor moving accepted tasks to the ready queue) is
        # worker CPU too: let it finish, so the window measures binding and running only.
        admitted = redis.Redis.from_url(stack.redis.url)
        try:
            wait_until(lambda: admitted.zcard(c.ACCEPTED_KEY) == 0, 600, "admission",
                       interval=0.5)
        finally:
            admitted.close()
        # Every slot filled once (the first wave is a burst of 2N binds), then a warm-up.
        wait_until(lambda: sum(bound(port) for port in metric_ports) >= 2 * nodes, 600,
                   "the first wave of binds", interval=0.5)
        time.sleep(warmup_s)  # a bench, not a test: a fixed warm-up before the window
        procs: dict[str, list[ManagedProcess]] = {
            "worker": stack.workers, "farm": [farm],
            "gateway": [stack.gateway] if stack.gateway else [], "Redis": [stack.redis]}

        def snapshot() -> tuple[float, dict[str, float], int, float]:
            cpu = {k: sum(cpu_seconds(p.proc.pid) for p in ps) for k, ps in procs.items()}
            cpu["machine"] = machine_busy()
            return (time.time(), cpu, redis_calls(stack.redis.port),
                    sum(bound(port) for port in metric_ports))
        t0, cpu0, calls0, bound0 = snapshot()
        time.sleep(window_s)
        t1, cpu1, calls1, bound1 = snapshot()
        sockets = max(sockets_of(w.proc.pid) for w in stack.workers)
        rss = max(rss_mib(w.proc.pid) for w in stack.workers)
        done = finished_between(farm.urls, t0, t1)
        failover = failover_s(stack, farm.urls)
    finally:
        if stack is not None:
            stack.stop()
        farm.stop()
    window = t1 - t0
    shares = {k: (cpu1[k] - cpu0[k]) / window for k in cpu0}
    machine = shares.pop("machine")
    efficiency = done / (nodes * window / task_s)
    per_task = (shares["worker"] * window / done) if done else float("nan")
    redis_per_task = (calls1 - calls0) / done if done else float("nan")
    share_text = ", ".join(f"{shares[k]:.2f}" for k in ("worker", "farm", "gateway", "Redis"))
    share_text += f"; machine {machine:.2f}"
    return (f"| {nodes} | {task_s:g} s | {workers} | {efficiency:.3f} ({done} in {window:.0f} s) | "
            f"{(bound1 - bound0) / window:.1f} | {per_task * 1000:.1f} ms | "
            f"{redis_per_task:.1f} | {sockets} | {rss:.0f} MiB | {failover:.2f} s | {share_text} | "
            f"{_limit(shares, machine, workers, efficiency)} |")


def bench_scale(root: pathlib.Path, fleets: tuple[int, ...] = FLEETS,
                workers: tuple[int, ...] = WORKERS, task_s: float = TASK_S) -> list[str]:
    rows = []
    for count in workers:
        for nodes in fleets:
            rows.append(point(root, nodes, count, task_s))
            print(rows[-1], file=sys.stderr, flush=True)  # progress: a point takes a minute
    return rows


if __name__ == "__main__":
    import tempfile
    fleets = tuple(int(n) for n in sys.argv[1].split(",")) if len(sys.argv) > 1 else FLEETS
    counts = tuple(int(n) for n in sys.argv[2].split(",")) if len(sys.argv) > 2 else WORKERS
    task_s = float(sys.argv[3]) if len(sys.argv) > 3 else TASK_S
    with tempfile.TemporaryDirectory(prefix="cs-bench-scale-") as tmp:
        print(HEADER)
        print("\n".join(bench_scale(pathlib.Path(tmp), fleets, counts, task_s)), flush=True)
