"""`make bench BENCH=autoscale`: the Nomad Autoscaler answering a backlog, on a local cluster.

One local cluster (`MESH=nomad up`: real Consul and Nomad agents running our job files, simulated
nodes), a Prometheus scraping the workers and the real autoscaler agent, set up as
tests/test_autoscaler.py does (tests/support/autoscaling.py). With the comfyui group at its min
of 1 node and its max lowered to 3, a burst of tasks: how long until the autoscaler decides,
Nomad places and starts the new allocations, and a new node (one not there before the burst)
starts a task; tasks/s over the burst; then how long until the group is back at 1 once the last
task finished. Then, the autoscaler stopped and the group scaled to 3 with `nomad job scale`,
the same burst on that fixed fleet, for the ratio. Prints Markdown rows.
"""

from __future__ import annotations

import datetime
import pathlib
import re
import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfy_service.agents.binaries import agent_binary  # noqa: E402
from comfy_service.polling import wait_until  # noqa: E402
from tests.support.autoscaling import (  # noqa: E402
    autoscaled,
    backlog_prometheus,
    ready_to_scale,
    running_autoscaler,
)
from tests.support.nomad_cluster import STEP_MS, Cluster, running_cluster  # noqa: E402

# 36 tasks of 40 steps (2 s each on the simulator): 72 s of work, so one node (one prompt at a
# time) would still be busy long after the new nodes could have started.
BURST, STEPS, NODES = 36, 40, 3

HEADER = (f"| autoscaling: burst of {BURST} tasks x {STEPS} steps ({STEPS * STEP_MS / 1000:g} s "
          f"each), group min 1, max {NODES} | measured |\n| --- | --- |")


def _epoch(stamp: str | int) -> float:
    """Seconds since the epoch of an ISO time (any sub-second digits) or Nomad's nanoseconds."""
    if isinstance(stamp, int):
        return stamp / 1e9
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _burst(cluster: Cluster) -> tuple[float, float, list[dict[str, Any]]]:
    """Submit the burst and wait for it: when its submits began, how long they took (one after
    the other, as the tests submit), and its task records."""
    submitted = time.time()
    ids = cluster.submit(BURST, steps=STEPS)
    submitting = time.time() - submitted
    records = cluster.finish(ids, timeout=600)
    failed = [r for r in records if r["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} of the burst's tasks did not succeed: {failed[0]}")
    return submitted, submitting, records


def _wall(submitted: float, records: list[dict[str, Any]]) -> float:
    return max(_epoch(r["finished_at"]) for r in records) - submitted


def _per_node(records: list[dict[str, Any]]) -> list[int]:
    return sorted(Counter(r["node"] for r in records).values(), reverse=True)


def _scale_out(cluster: Cluster) -> tuple[list[str], float]:
    """The burst on the group at 1 node with the autoscaler running: rows, and the wall."""
    before = {a["node"] for a in wait_until(lambda: cluster.settled(1), 120, "one node")}
    submitted, submitting, records = _burst(cluster)
    wall = _wall(submitted, records)
    # The new allocations still run: the cooldown holds the scale-in past the burst's end.
    new = [a for a in cluster.allocs(stopping=True) if a["node"] not in before]
    decisions = [e for e in autoscaled(cluster) if _epoch(e["Time"]) >= submitted]
    up = min(_epoch(e["Time"]) for e in decisions if e["Count"] > e["PreviousCount"])
    firsts = sorted(min(_epoch(r["started_at"]) for r in records if r["node"] == a["node"])
                    - submitted for a in new if any(r["node"] == a["node"] for r in records))
    placed = min(_epoch(a["CreateTime"]) for a in new)
    started = min(_epoch(a["TaskStates"]["comfyui"]["StartedAt"]) for a in new)
    changes = ", ".join(f"{e['PreviousCount']} -> {e['Count']} at "
                        f"{_epoch(e['Time']) - submitted:.1f} s" for e in reversed(decisions))
    rows = [
        f"| burst submitted (its {BURST} submits took {submitting:.1f} s) -> the autoscaler's "
        f"first decision in Nomad (all: {changes}) | {up - submitted:.1f} s |",
        f"| burst submitted -> first new allocation placed by Nomad | {placed - submitted:.1f} s |",
        f"| burst submitted -> first new allocation's simulator process started | "
        f"{started - submitted:.1f} s |",
        f"| **burst submitted -> first task started on a new node** (each new node: "
        f"{', '.join(f'{t:.1f}' for t in firsts)} s) | **{firsts[0]:.1f} s** |",
        f"| scale-out: the burst on 1 node growing to {NODES} (tasks per node "
        f"{_per_node(records)}) | {wall:.1f} s, {BURST / wall:.2f} tasks/s |",
    ]
    finished = max(_epoch(r["finished_at"]) for r in records)
    wait_until(lambda: cluster.count() == 1 and cluster.settled(1), 300,
               "the group back at one node", interval=0.2)
    back = time.time()
    down = max(_epoch(e["Time"]) for e in autoscaled(cluster) if e["Count"] == 1)
    rows += [
        f"| last task finished -> the autoscaler's decision back to 1 | {down - finished:.1f} s |",
        f"| last task finished -> group at 1 node (the others stopped, out of Consul) | "
        f"{back - finished:.1f} s |",
    ]
    return rows, wall


def _fixed(cluster: Cluster) -> tuple[str, float]:
    """The burst on the group held at NODES nodes (no autoscaler): its row, and the wall."""
    wait_until(cluster.deployed, 120, "the scale-in's deployment to finish")
    cluster.cli("job", "scale", "comfyui", "gpu", str(NODES))
    wait_until(lambda: cluster.settled(NODES), 120, f"{NODES} nodes passing", interval=0.5)
    wait_until(cluster.deployed, 120, "the scale's deployment to finish")
    submitted, _, records = _burst(cluster)
    wall = _wall(submitted, records)
    return (f"| fixed fleet: the same burst on {NODES} nodes from the start (tasks per node "
            f"{_per_node(records)}) | {wall:.1f} s, {BURST / wall:.2f} tasks/s |"), wall


def bench_autoscale(root: pathlib.Path) -> list[str]:
    binary = agent_binary("nomad-autoscaler")
    with contextmanager(running_cluster)(root / "autoscale", nodes=1) as cluster:
        prometheus = backlog_prometheus(root / "prometheus", cluster)
        try:
            ready_to_scale(cluster, prometheus, NODES)
            with running_autoscaler(binary, cluster, prometheus) as agent:
                # The burst comes once the agent watches the group, at any point of its cycle
                wait_until(lambda: agent.logged("creating new policy handler"), 30,
                           "the autoscaler to take the group's policy", interval=0.2)
                rows, scaled = _scale_out(cluster)
            row, fixed = _fixed(cluster)
        finally:
            prometheus.stop()
    return rows + [row, f"| scale-out vs fixed fleet (wall ratio; throughput share) | "
                        f"{scaled / fixed:.2f}x; {fixed / scaled:.2f} |"]


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory(prefix="cs-bench-autoscale-") as tmp:
        print(HEADER)
        print("\n".join(bench_autoscale(pathlib.Path(tmp))), flush=True)
