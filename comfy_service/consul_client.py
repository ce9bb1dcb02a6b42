"""The one way this service talks to Consul: py-consul clients built from an address and token.

The sidecar registers and updates checks with the synchronous client; the worker follows the
passing nodes with blocking queries on the asyncio client. Both get the same address parsing,
token handling and timeouts from here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import consul
import consul.aio

# Seconds a plain Consul request may take. A blocking query is given its wait time on top.
REQUEST_TIMEOUT_S = 10.0


def _parts(address: str) -> tuple[str, int, str]:
    split = urlsplit(address if "://" in address else f"http://{address}")
    return split.hostname or "127.0.0.1", split.port or 8500, split.scheme or "http"


def sync_client(address: str, token: str | None) -> consul.Consul:
    """A client for the sidecar's registration and check updates."""
    host, port, scheme = _parts(address)
    return consul.Consul(host=host, port=port, scheme=scheme, token=token,
                         connections_timeout=REQUEST_TIMEOUT_S)


def async_client(address: str, token: str | None, wait_s: float) -> consul.aio.Consul:
    """A client for blocking queries that wait up to `wait_s`; build it inside the event loop."""
    host, port, scheme = _parts(address)
    # Consul adds up to wait/16 of jitter before it answers a blocking query.
    return consul.aio.Consul(host=host, port=port, scheme=scheme, token=token,
                             connections_timeout=REQUEST_TIMEOUT_S + wait_s * 17 / 16)
