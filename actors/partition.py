"""Which worker follows which node (pure): rendezvous hashing over the live workers.

Each node is followed by one worker: the one whose hash of (worker, node) is highest. Every
worker computes the same answer from the same member list, without talking to the others, and
when a worker joins or leaves only the nodes it gains or loses move (about N / W of them),
not the whole fleet. A worker links to, binds to and reports on its own nodes only, so sockets,
per-node polling and binding scans are N / W per worker instead of N. The ready queue stays
shared: whichever worker has a free slot first takes the best waiting task, so load still
spreads over the whole fleet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def _score(worker: str, node: str) -> int:
    # A stable hash (Python's hash() differs per process); 8 bytes of BLAKE2b spread well.
    digest = hashlib.blake2b(f"{worker}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(node: str, workers: Sequence[str]) -> str | None:
    """The worker that follows `node` (None when there is no worker)."""
    return max(workers, key=lambda worker: (_score(worker, node), worker), default=None)


def owned_by(me: str, nodes: Iterable[str], workers: Sequence[str]) -> frozenset[str]:
    """The nodes `me` follows. A worker missing from `workers` (it has not yet been seen in
    the member list) counts itself in, so it never follows nothing while it is alive."""
    members = sorted(set(workers) | {me})
    return frozenset(node for node in nodes if owner(node, members) == me)
