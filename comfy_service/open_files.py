"""Open-files limit: processes that hold a socket or two per node raise their soft limit.

A worker holds a WebSocket and an HTTP connection per node it follows, a sidecar an HTTP
client per ComfyUI, the simulator's farm a listening socket per node and one per client:
at a few hundred nodes each passes the common soft limit of 1,024 open files.
"""

from __future__ import annotations

import resource


def raise_open_files_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; answers (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft
