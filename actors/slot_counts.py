"""How many slots are taken on each node of a worker's share, counted by the worker (pure).

Reading every node's count from Redis for each bind pass cost O(share) Redis work a task. So
a worker counts its own binds and releases as they return, and takes the share's counts from
a read every second, which brings what others did there (a task bound before the share
moved, one adopted from a dead worker). A read may predate a bind or release of ours that
returned while it was on its way; for such a node the read is stale and our count stands:
each change is stamped, and a read is taken only for nodes unchanged since it was asked for.
The bind script in Redis stays the authority: a count that is off makes a bind fail (the
worker reads that node again) or leaves a slot unused until the next read, never overbooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class SlotCounts:
    def __init__(self) -> None:
        self._used: dict[str, int] = {}
        self._changes = 0                      # changes of ours counted so far
        self._changed_at: dict[str, int] = {}  # ... and the last one on each node

    def __contains__(self, name: object) -> bool:
        return name in self._used

    def __getitem__(self, name: str) -> int:
        return self._used[name]

    def names(self) -> list[str]:
        return list(self._used)

    def asking(self) -> int:
        """To be called as a read is asked for; hand the answer to `read`."""
        return self._changes

    def add(self, name: str, change: int) -> bool:
        """Our own bind (+1) or release (-1) on a node, once Redis has answered it; False
        (nothing counted) for a node not counted here."""
        if name not in self._used:
            return False
        self._changes += 1
        self._changed_at[name] = self._changes
        self._used[name] = max(0, self._used[name] + change)
        return True

    def read(self, used: Mapping[str, int], asked_at: int, share: Iterable[str]) -> set[str]:
        """Counts read from Redis (asked for when `asking()` said `asked_at`) for the nodes of
        `share`; nodes no longer in it are forgotten. Answers the nodes whose count was
        taken or forgotten."""
        keep = set(share)
        changed = set()
        for name, count in used.items():
            if name in keep and self._changed_at.get(name, -1) <= asked_at:
                self._used[name] = count
                changed.add(name)
        for name in [n for n in self._used if n not in keep]:
            del self._used[name]
            self._changed_at.pop(name, None)
            changed.add(name)
        return changed
