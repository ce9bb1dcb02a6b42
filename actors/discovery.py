"""Where the ComfyUI nodes are: a static list (COMFYUI_URLS) or Consul's `comfyui` nodes.

The Consul view is kept fresh with blocking queries on the health endpoint; if Consul is briefly
unreachable the last good view stays in use, so dispatch does not stop. A node whose checks all
pass takes work. A node whose only failing check is Consul maintenance is cordoned or draining
(comfy_service/availability.py: an operator's request, or its sidecar letting the running
prompt finish before Nomad stops it): it takes no new task. Any other failing check means the
node is gone, and its tasks fail over.

With 1,000 nodes each answer is the whole fleet (about 2 MB of JSON), and any node's write
wakes every watcher: so a watcher asks at most once per MIN_QUERY_INTERVAL_S (changes in between
arrive together in the next answer), and calls its listener only when something a worker reads
changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import consul

from comfy_service import constants as c
from comfy_service import metrics
from comfy_service.availability import CORDONED, DRAINING, READY, state_of_maintenance
from comfy_service.consul_client import async_client
from comfy_service.logs import event

log = logging.getLogger("actors.discovery")

BLOCKING_WAIT_S = 30
MIN_QUERY_INTERVAL_S = 1.0
RETRY_S = (0.5, 1.0, 2.0, 5.0)
FAILING = "failing"
# Figures a sidecar reports for people (the Consul UI; node_sidecar/meta.py RIDE_ALONG_KEYS):
# no worker reads them (slots are counted in Redis), so a change in them alone is no news.
UNREAD_META = frozenset({"queue_running", "queue_pending", "gpu_temp_c", "gpu_power_w"})


@dataclass(frozen=True)
class DiscoveredNode:
    name: str
    url: str
    meta: Mapping[str, str] = field(default_factory=dict)
    availability: str = READY

    @property
    def takes_work(self) -> bool:
        return self.availability == READY


Listener = Callable[[list[DiscoveredNode]], Awaitable[None]]


def static_nodes(urls: tuple[str, ...]) -> list[DiscoveredNode]:
    return [DiscoveredNode(url.split("://", 1)[-1], url) for url in urls]


def _is_maintenance(check: Mapping[str, object]) -> bool:
    check_id = str(check.get("CheckID", ""))
    return check_id == c.NODE_MAINTENANCE_CHECK or check_id.startswith(c.SERVICE_MAINTENANCE_CHECK)


def health_state(checks: list[Mapping[str, object]]) -> str:
    """READY, CORDONED or DRAINING (only maintenance checks fail; the maintenance reason says
    which) or FAILING, from a node's checks (pure)."""
    failing = [check for check in checks if check.get("Status") != "passing"]
    if not failing:
        return READY
    if not all(_is_maintenance(check) for check in failing):
        return FAILING
    states = {state_of_maintenance(str(check.get("Notes") or "")) for check in failing}
    return DRAINING if DRAINING in states else CORDONED


def parse_health(entries: list[dict[str, object]]) -> list[DiscoveredNode]:
    """The nodes of /v1/health/service/<name> that are not failing (pure)."""
    nodes = []
    for entry in entries:
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        checks = entry.get("Checks") or []
        assert isinstance(service, dict) and isinstance(node, dict) and isinstance(checks, list)
        state = health_state(checks)
        if state == FAILING:
            continue
        address = service.get("Address") or node.get("Address")
        nodes.append(DiscoveredNode(str(service["ID"]), f"http://{address}:{service['Port']}",
                                    dict(service.get("Meta") or {}), state))
    return sorted(nodes, key=lambda n: n.name)


def _read_meta(node: DiscoveredNode) -> dict[str, str]:
    return {k: v for k, v in node.meta.items() if k not in UNREAD_META}


def same_view(old: list[DiscoveredNode] | None, new: list[DiscoveredNode]) -> bool:
    """Whether two parsed views differ at most in what no worker reads (pure; both sorted)."""
    if old is None or len(old) != len(new):
        return False
    return all(a.name == b.name and a.url == b.url and a.availability == b.availability
               and _read_meta(a) == _read_meta(b) for a, b in zip(old, new, strict=True))


async def watch_consul(address: str, service: str, token: str | None,
                       listener: Listener) -> None:
    """Call `listener` with the passing nodes now and on every change that matters to a
    worker, until cancelled."""
    index: str | None = None
    failures = 0
    last: list[DiscoveredNode] | None = None
    asked_at: float | None = None
    loop = asyncio.get_running_loop()
    client = async_client(address, token, BLOCKING_WAIT_S)
    try:
        while True:
            if asked_at is not None:  # a busy fleet answers at once: pace the questions
                await asyncio.sleep(max(0.0, asked_at + MIN_QUERY_INTERVAL_S - loop.time()))
            asked_at = loop.time()
            try:
                new_index, entries = await client.health.service(
                    service, index=index, wait=f"{BLOCKING_WAIT_S}s")
            except (TimeoutError, aiohttp.ClientError, consul.ConsulException) as exc:
                failures += 1
                metrics.consul_up(0)
                event(log, "discovery.consul_unreachable", logging.WARNING,
                      reason=f"{type(exc).__name__}: {exc}", keeping="last good view")
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S)) - 1])
                continue
            failures = 0
            metrics.consul_up(1)
            if index is not None and int(new_index) < int(index):
                new_index = None  # Consul restarted and its index went back: start over
            index = new_index
            nodes = parse_health(entries)
            if not same_view(last, nodes):
                last = nodes
                await listener(nodes)
    finally:
        await client.close()
