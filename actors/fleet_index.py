"""The nodes one worker binds to, kept arranged by score (pure), so a bind looks at a few
nodes instead of the whole share.

At 1,000 nodes, scoring and arranging every node for each bind cost a worker 3-4 ms, and
building a view of every node for each bind pass as much again: per-task cost grew with
the fleet. Here a node is re-scored only when something about it changes (its slot count,
its health, its Meta, another node's load on its GPU), and a choice pops the best node off
a heap. It answers what `dispatch.choose_node` answers on the same views (a randomised test
holds it to that). The best-ranked node is taken at once when choose_node would take it
without arranging the fleet: under a backlog (its shortcut), or when no node would finish a
task sooner (kept here too: the earliest finish over the capable nodes); otherwise
choose_node itself decides over all the views (near the end of a backlog, where a slow node
may be left idle).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.dispatch import TIE, GpuLoad, Need, NodeView, can_run, choose_node, finish, rank

# What can run where depends only on a node's classes and checkpoints: nodes are grouped by
# them (a fleet has a few kinds, not one per node), each group with its own heap.
Kind = tuple[frozenset[str] | None, frozenset[str] | None]
Entry = tuple[float, float, int, str, int]  # dispatch.rank (the order offered in), stamp
Finish = tuple[float, str, int]              # dispatch.finish, name, stamp


@dataclass(eq=False)
class _Group:
    names: set[str] = field(default_factory=set)
    healthy: int = 0
    # Stale entries are skipped (and dropped when they pile up), not removed at once.
    heap: list[Entry] = field(default_factory=list)         # healthy nodes with a free slot
    finishes: list[Finish] = field(default_factory=list)    # healthy nodes

    def compact(self, live: dict[str, int]) -> None:
        if len(self.heap) + len(self.finishes) > 4 * len(self.names) + 64:
            self.heap = [e for e in self.heap if live.get(e[3]) == e[4]]
            self.finishes = [e for e in self.finishes if live.get(e[1]) == e[2]]
            heapq.heapify(self.heap)
            heapq.heapify(self.finishes)


class FleetIndex:
    def __init__(self) -> None:
        self._views: dict[str, NodeView] = {}
        self._loads: dict[str, GpuLoad] = {}      # per GPU, over every node here
        self._on_gpu: dict[str, set[str]] = {}
        self._groups: dict[Kind, _Group] = {}
        self._stamp: dict[str, int] = {}          # the node's live heap entry
        self._stamps = itertools.count()
        self._runs: dict[tuple[Kind, Need], bool] = {}
        self._weights: dict[tuple[Kind, ...], float] = {}  # healthy speed per set of kinds
        self.free = 0   # free slots over the healthy nodes (choose_node's callers' sum)
        self.open = 0   # healthy nodes with a free slot

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def get(self, name: str) -> NodeView | None:
        return self._views.get(name)

    def names(self) -> list[str]:
        return list(self._views)

    def views(self) -> list[NodeView]:
        return list(self._views.values())

    # --- changes -------------------------------------------------------------------------------
    def put(self, view: NodeView) -> None:
        """Add a node, or tell what changed about it."""
        old = self._views.get(view.name)
        if old == view:
            return
        rescore = {view.name}
        if old is not None:
            rescore |= self._leave(old)
        self._views[view.name] = view
        group = self._groups.setdefault(_kind(view), _Group())
        group.names.add(view.name)
        group.healthy += 1 if view.healthy else 0
        self.free += view.free if view.healthy else 0
        self.open += 1 if view.healthy and view.free > 0 else 0
        if old is None or (old.healthy, old.weight, _kind(old)) != (
                view.healthy, view.weight, _kind(view)):
            self._weights.clear()
        if view.gpu_uuid:
            rescore |= self._count_on_gpu(view, +1)
        for name in rescore:
            self._push(name)

    def remove(self, name: str) -> None:
        old = self._views.get(name)
        if old is not None:
            for other in self._leave(old):
                self._push(other)
            self._weights.clear()

    def _leave(self, old: NodeView) -> set[str]:
        """Take a node out; answers the nodes whose score that changes."""
        del self._views[old.name]
        self._stamp.pop(old.name, None)  # its heap entries are stale from now on
        kind = _kind(old)
        group = self._groups[kind]
        group.names.discard(old.name)
        group.healthy -= 1 if old.healthy else 0
        if not group.names:
            del self._groups[kind]
        self.free -= old.free if old.healthy else 0
        self.open -= 1 if old.healthy and old.free > 0 else 0
        return self._count_on_gpu(old, -1) if old.gpu_uuid else set()

    def _count_on_gpu(self, view: NodeView, sign: int) -> set[str]:
        """Add (+1) or take away (-1) a node's tasks on its GPU: the shared-GPU part of the
        score of every node on it changes; answers those nodes."""
        gpu = view.gpu_uuid or ""
        known = self._loads.get(gpu, GpuLoad(0, 0, 0))
        load = GpuLoad(known.nodes + sign, known.used + sign * view.used,
                       known.slots + sign * view.slots)
        members = self._on_gpu.setdefault(gpu, set())
        (members.add if sign > 0 else members.discard)(view.name)
        if load.nodes <= 0:
            del self._loads[gpu], self._on_gpu[gpu]
            return set()
        self._loads[gpu] = load
        return members - {view.name} if sign < 0 else set(members)

    def _push(self, name: str) -> None:
        view = self._views.get(name)
        if view is None:
            return
        stamp = next(self._stamps)
        self._stamp[name] = stamp  # its older entries are stale from now on
        if not view.healthy:
            return
        group = self._groups[_kind(view)]
        heapq.heappush(group.finishes, (finish(view), name, stamp))
        if view.free > 0:
            heapq.heappush(group.heap, rank(view, self._loads) + (stamp,))
        group.compact(self._stamp)

    # --- choosing ------------------------------------------------------------------------------
    def choose(self, need: Need, waiting: int | None = None) -> NodeView | None:
        """What choose_node(self.views(), need, waiting) answers."""
        kinds = tuple(kind for kind in self._groups if self._can_run(kind, need))
        groups = [self._groups[kind] for kind in kinds]
        best = min((top for g in groups if (top := self._top(g.heap)) is not None),
                   default=None)
        if best is None:
            return None
        node = self._views[best[3]]
        if waiting is None:
            return node
        own_finish = finish(node)
        if waiting > own_finish * self._weight(kinds) - 1 + TIE:
            return node  # choose_node's backlog shortcut, on the same figures
        # worth_starting: with no other capable node, or when no other would finish this
        # task sooner (then own_finish is within TIE of the earliest finish of them all).
        earliest = min(top[0] for g in groups if (top := self._top(g.finishes)) is not None)
        if sum(g.healthy for g in groups) < 2 or own_finish <= earliest + TIE:
            return node
        return choose_node(self._views.values(), need, waiting)

    def _top(self, heap: list[Any]) -> Any:
        """The best live entry of one of a group's heaps (dropping stale ones), or None."""
        while heap and self._stamp.get(heap[0][-2]) != heap[0][-1]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _can_run(self, kind: Kind, need: Need) -> bool:
        key = (kind, need)
        known = self._runs.get(key)
        if known is None:
            if len(self._runs) > 10_000:
                self._runs.clear()
            known = self._runs[key] = can_run(NodeView("", True, 0, 0, classes=kind[0],
                                                       checkpoints=kind[1]), need)
        return known

    def _weight(self, kinds: tuple[Kind, ...]) -> float:
        """Summed speed of the healthy nodes of these kinds, as choose_node sums it (fsum:
        exact, so the order of the nodes does not matter); worked out again only after a
        node's health, speed or kind changed."""
        known = self._weights.get(kinds)
        if known is None:
            known = self._weights[kinds] = math.fsum(_healthy_weights(
                self._views[name] for kind in kinds for name in self._groups[kind].names))
        return known


def _kind(view: NodeView) -> Kind:
    return view.classes, view.checkpoints


def _healthy_weights(views: Iterable[NodeView]) -> Iterable[float]:
    return (v.weight for v in views if v.healthy)
