"""One TLS context per process, shared by the httpx clients made per node.

httpx builds a new SSLContext for every client it is not given one, loading the whole CA
bundle each time: about 14 ms of CPU and 0.8 MiB per client here. A worker makes a client per
node it follows, so at 1,000 nodes that was 14 s of CPU at start and 800 MiB of memory
(docs/benchmarks.md, fleet scale). The shared context verifies exactly as httpx's default.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
