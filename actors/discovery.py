"""Where the ComfyUI nodes are: a static list (COMFYUI_URLS) or Consul's passing `comfyui` nodes.

The Consul view is kept fresh with blocking queries on the health endpoint (passing only); if
Consul is briefly unreachable the last good view stays in use, so dispatch does not stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from comfy_service.logs import event

log = logging.getLogger("actors.discovery")

BLOCKING_WAIT_S = 30
RETRY_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class DiscoveredNode:
    name: str
    url: str
    meta: Mapping[str, str] = field(default_factory=dict)


Listener = Callable[[list[DiscoveredNode]], Awaitable[None]]


def static_nodes(urls: tuple[str, ...]) -> list[DiscoveredNode]:
    return [DiscoveredNode(url.split("://", 1)[-1], url) for url in urls]


def parse_health(entries: list[dict[str, object]]) -> list[DiscoveredNode]:
    """Nodes from /v1/health/service/<name> (pure)."""
    nodes = []
    for entry in entries:
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        assert isinstance(service, dict) and isinstance(node, dict)
        address = service.get("Address") or node.get("Address")
        nodes.append(DiscoveredNode(str(service["ID"]), f"http://{address}:{service['Port']}",
                                    dict(service.get("Meta") or {})))
    return sorted(nodes, key=lambda n: n.name)


async def watch_consul(address: str, service: str, token: str | None,
                       listener: Listener) -> None:
    """Call `listener` with the passing nodes now and on every change, forever."""
    headers = {"X-Consul-Token": token} if token else {}
    index = "0"
    failures = 0
    url = f"{address.rstrip('/')}/v1/health/service/{service}"
    async with httpx.AsyncClient(headers=headers, timeout=BLOCKING_WAIT_S + 10) as client:
        while True:
            try:
                response = await client.get(url, params={"passing": "true", "index": index,
                                                         "wait": f"{BLOCKING_WAIT_S}s"})
                response.raise_for_status()
            except httpx.HTTPError as exc:
                failures += 1
                event(log, "discovery.consul_unreachable", logging.WARNING,
                      reason=f"{type(exc).__name__}: {exc}", keeping="last good view")
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S)) - 1])
                continue
            failures = 0
            new_index = response.headers.get("X-Consul-Index", "0")
            if int(new_index) < int(index):
                new_index = "0"  # Consul restarted and its index went back: start over
            index = new_index
            await listener(parse_health(response.json()))
