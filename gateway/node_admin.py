"""Operators' node controls: cordon, drain and uncordon, guarded by an admin key.

The gateway only records the wish in Consul KV (comfy_service/availability.py); the node's
sidecar applies it as service maintenance, and every worker sees that in the health answer it
already follows. So the state is the same for every worker and gateway process, and it survives
a restart of any of them.
"""

from __future__ import annotations

import logging

import aiohttp
import consul
import consul.aio

from actors import tasks
from comfy_service import availability
from comfy_service.consul_client import async_client
from comfy_service.errors import AdminRequired, NodeAdminUnavailable, NodeNotFound, Unavailable
from comfy_service.logs import event
from comfy_service.settings import Settings
from gateway.auth import bearer_key

log = logging.getLogger("gateway.node_admin")


class NodeAdmin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consul: consul.aio.Consul | None = None

    def check_allowed(self, authorization: str) -> None:
        """403 unless the caller holds an admin key; without ADMIN_API_KEYS nobody may."""
        if not self.settings.admin_api_keys:
            raise AdminRequired("node administration is off: set ADMIN_API_KEYS and call with "
                                "one of those keys")
        if bearer_key(authorization, self.settings.admin_api_keys) is None:
            raise AdminRequired("node administration needs an admin key (ADMIN_API_KEYS)")
        if self.settings.discovery != "consul":
            raise NodeAdminUnavailable("cordon and drain act through Consul; this service "
                                       "uses a static node list (DISCOVERY=static)")

    async def request(self, node_id: str, action: str, known_nodes: set[str],
                      reason: str) -> str:
        """Record the operator's wish for `node_id`; returns the state asked for."""
        if not availability.NODE_ID.match(node_id) or node_id not in known_nodes:
            raise NodeNotFound(f"no node {node_id!r}; GET /api/v1/nodes lists them")
        state = availability.ACTIONS[action]
        key = availability.kv_key(node_id)
        try:
            client = self._client()
            if state == availability.READY:
                await client.kv.delete(key)
            else:
                await client.kv.put(key, availability.wanted_value(state, reason,
                                                                   tasks.utc_now()))
        except (TimeoutError, aiohttp.ClientError, consul.ConsulException) as exc:
            raise Unavailable(f"Consul did not take the change: {type(exc).__name__}") from exc
        event(log, "node.availability_requested", node=node_id, state=state, reason=reason)
        return state

    def _client(self) -> consul.aio.Consul:
        if self._consul is None:  # built inside the event loop, on first use
            self._consul = async_client(self.settings.consul_addr, self.settings.consul_token, 0)
        return self._consul

    async def close(self) -> None:
        if self._consul is not None:
            await self._consul.close()
