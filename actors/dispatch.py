"""Which node gets the next task (pure): the least-loaded healthy node with a free slot.

Score (lower is better), from our own slot accounting (authoritative) and the sidecar's Meta:

    slots_used / (slots * weight)            our load on the node, scaled by its speed
  + 0.5 * shared_gpu_load                    used/slots over all nodes on the same GPU
  + 0.3 * gpu_util / 100                     what NVML sees, including work we did not send
  + 0.2 * vram_used / vram_total             memory pressure

Nodes that lack a node class or checkpoint a task needs are never chosen for it. Near the end
of a backlog a slow node does not start a task that the faster nodes would finish sooner
(`worth_starting`), which keeps the makespan of mixed fleets close to the ideal.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SHARED_GPU_WEIGHT, GPU_UTIL_WEIGHT, VRAM_WEIGHT = 0.5, 0.3, 0.2
TIE = 1e-9  # task-time comparisons within this are ties (sums of speeds are not exact)


@dataclass(frozen=True)
class NodeView:
    name: str
    healthy: bool
    slots: int            # how many tasks we keep on it at once (one executing, one waiting)
    used: int             # our own slot accounting, authoritative (from Redis)
    weight: float = 1.0   # relative speed: a node twice as fast takes twice the share
    gpu_uuid: str | None = None
    gpu_util: float | None = None        # percent
    vram_fraction: float | None = None   # used / total
    classes: frozenset[str] | None = None      # node classes it has (None: unknown yet)
    checkpoints: frozenset[str] | None = None

    @property
    def free(self) -> int:
        return self.slots - self.used


@dataclass(frozen=True)
class Need:
    """What a task needs from a node: node classes and checkpoint file names."""

    classes: frozenset[str] = field(default_factory=frozenset)
    checkpoints: frozenset[str] = field(default_factory=frozenset)


def need_of(graph: Mapping[str, object]) -> Need:
    classes, checkpoints = set(), set()
    for node in graph.values():
        if not isinstance(node, dict):
            continue
        classes.add(str(node.get("class_type")))
        ckpt = (node.get("inputs") or {}).get("ckpt_name")
        if isinstance(ckpt, str):
            checkpoints.add(ckpt)
    return Need(frozenset(classes), frozenset(checkpoints))


def can_run(node: NodeView, need: Need) -> bool:
    if node.classes is not None and not need.classes <= node.classes:
        return False
    return node.checkpoints is None or need.checkpoints <= node.checkpoints


@dataclass(frozen=True)
class GpuLoad:
    """Our tasks on one physical GPU, over all the nodes (ComfyUI processes) sharing it."""

    nodes: int
    used: int
    slots: int


def gpu_loads(nodes: Iterable[NodeView]) -> dict[str, GpuLoad]:
    """Per gpu_uuid, summed once per decision: scoring each node against every other one
    would cost O(nodes^2) a bind, which a fleet of hundreds of nodes cannot afford."""
    loads: dict[str, GpuLoad] = {}
    for n in nodes:
        if n.gpu_uuid:
            known = loads.get(n.gpu_uuid, GpuLoad(0, 0, 0))
            loads[n.gpu_uuid] = GpuLoad(known.nodes + 1, known.used + n.used,
                                        known.slots + n.slots)
    return loads


def score(node: NodeView, loads: Mapping[str, GpuLoad]) -> float:
    value = node.used / (node.slots * node.weight)
    shared = loads.get(node.gpu_uuid) if node.gpu_uuid else None
    if shared is not None and shared.nodes > 1:
        value += SHARED_GPU_WEIGHT * shared.used / shared.slots
    if node.gpu_util is not None:
        value += GPU_UTIL_WEIGHT * node.gpu_util / 100
    if node.vram_fraction is not None:
        value += VRAM_WEIGHT * node.vram_fraction
    return value


def finish(node: NodeView) -> float:
    """When the node would finish one more task, in units of one task on a speed-1 node."""
    return (node.used + 1) / node.weight


def rank(node: NodeView, loads: Mapping[str, GpuLoad]) -> tuple[float, float, int, str]:
    """The order nodes are offered a task in: score, then the faster (so among nodes alike
    by score, the first one looked at is usually worth starting), then most free."""
    return score(node, loads), finish(node), -node.free, node.name


class Capable:
    """The nodes that can run a task, arranged so `worth_starting` costs O(log nodes) a node
    instead of a pass over all of them (which made a decision O(nodes^2))."""

    def __init__(self, nodes: list[NodeView]) -> None:
        self.count = len(nodes)
        # When each node frees up (its tasks done), earliest first, with prefix sums of speed
        # and tasks: what all of them can take by time T is T x W(T) - U(T).
        by_free = sorted(nodes, key=lambda n: n.used / n.weight)
        self._free_at = [n.used / n.weight for n in by_free]
        self._weights, self._used = [0.0], [0.0]
        for n in by_free:
            self._weights.append(self._weights[-1] + n.weight)
            self._used.append(self._used[-1] + n.used)
        # The two earliest finishes of one more task: the best other than any given node.
        self._finishes = sorted((finish(n), n.name) for n in nodes)[:2]

    def can_take(self, by: float) -> float:
        """Tasks all these nodes can finish by time `by`: sum of max(0, weight x by - used)."""
        k = bisect.bisect_left(self._free_at, by)
        return by * self._weights[k] - self._used[k]

    def best_finish_besides(self, name: str) -> float:
        return next(finish for finish, who in self._finishes if who != name)


def worth_starting(node: NodeView, capable: Capable, waiting: int) -> bool:
    """Should `node` start the task at the head of the line now? Yes when the others cannot
    take all `waiting` tasks within the time `node` needs for one (it is needed), or when
    no other node would finish this task sooner. So every node works under a backlog, and
    at its end a slow node leaves the last tasks to faster ones. Times are in units of one
    task on a speed-1 node (weight = relative speed)."""
    if capable.count < 2:
        return True
    own_finish = finish(node)
    # The node itself frees up before own_finish and would count exactly 1 task by then.
    others_can_take = capable.can_take(own_finish) - 1
    if waiting > others_can_take + TIE:
        return True
    return own_finish <= capable.best_finish_besides(node.name) + TIE


def choose_node(nodes: Iterable[NodeView], need: Need = Need(),
                waiting: int | None = None) -> NodeView | None:
    """Lowest score among healthy nodes with a free slot that can run it; ties: the one that
    would finish one more task soonest (the faster), then most free. With `waiting` (tasks
    in line, this one included) a node must also be worth starting: looked at best-ranked
    first, so usually only the first one is asked."""
    everyone = list(nodes)
    capable = [n for n in everyone if n.healthy and can_run(n, need)]
    loads = gpu_loads(everyone)
    # Best first, lazily (a heap, not a sort: usually the first one is taken).
    ranked = [rank(n, loads) + (i,) for i, n in enumerate(capable) if n.free > 0]
    heapq.heapify(ranked)
    if waiting is None:
        return capable[ranked[0][-1]] if ranked else None
    # Under a backlog the answer is plain without arranging the fleet: the others together
    # take at most total speed x own finish tasks by then, so if more wait, the node is needed
    # (worth_starting's first rule, from an upper bound: O(1) instead of O(nodes log nodes)).
    total_weight = math.fsum(n.weight for n in capable)  # exact: the same in any order
    fleet: Capable | None = None
    while ranked:
        node = capable[heapq.heappop(ranked)[-1]]
        if waiting > finish(node) * total_weight - 1 + TIE:
            return node
        fleet = fleet or Capable(capable)
        if worth_starting(node, fleet, waiting):
            return node
    return None


def gpu_of(meta: Mapping[str, str]) -> dict[str, object] | None:
    """The GPU a sidecar reports in its Meta, for people (GET /api/v1/nodes); None without one
    (pure; bad numbers are left out)."""
    if not meta.get("gpu_uuid"):
        return None
    found: dict[str, object] = {"uuid": meta["gpu_uuid"], "name": meta.get("gpu_name", "")}
    for key, field_name in (("gpu_util", "util_pct"), ("vram_used_mb", "vram_used_mb"),
                            ("vram_total_mb", "vram_total_mb")):
        try:
            found[field_name] = float(meta[key])
        except (KeyError, ValueError):
            pass
    return found


def load_from_meta(meta: Mapping[str, str]) -> dict[str, object]:
    """NodeView fields from a sidecar's Consul Meta (pure; bad values are ignored)."""
    fields: dict[str, object] = {}
    try:
        if "weight" in meta:
            fields["weight"] = max(0.01, float(meta["weight"]))
        if "gpu_util" in meta:
            fields["gpu_util"] = float(meta["gpu_util"])
        if meta.get("vram_total_mb") and float(meta["vram_total_mb"]) > 0:
            fields["vram_fraction"] = float(meta["vram_used_mb"]) / float(meta["vram_total_mb"])
        if meta.get("gpu_uuid"):
            fields["gpu_uuid"] = meta["gpu_uuid"]
    except (ValueError, KeyError):
        pass
    return fields
