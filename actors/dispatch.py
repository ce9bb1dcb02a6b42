"""Which node gets the next task (pure): the least-loaded healthy node with a free slot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    name: str
    healthy: bool
    slots: int            # how many tasks we keep on it at once (one executing, one waiting)
    used: int             # our own slot accounting, authoritative (from Redis)
    weight: float = 1.0   # relative speed: a node twice as fast takes twice the share

    @property
    def free(self) -> int:
        return self.slots - self.used

    @property
    def load(self) -> float:
        return self.used / (self.slots * self.weight)


def choose_node(nodes: Iterable[NodeView]) -> NodeView | None:
    """Lowest load among healthy nodes with a free slot; ties go to the most free slots."""
    candidates = [n for n in nodes if n.healthy and n.free > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (n.load, -n.free, n.name))
