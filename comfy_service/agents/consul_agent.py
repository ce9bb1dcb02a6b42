"""`consul agent` on free loopback ports: dev mode, or a persistent single-node server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from comfy_service.agents.process import LOOPBACK, Agent, free_ports, get_json

CONSUL_START_TIMEOUT = 60.0


class ConsulAgent(Agent):
    """``consul agent -dev`` on free loopback ports.

    ``persistent=True`` runs a single-node server with its raft data in ``workdir``
    instead of dev mode's in-memory state, so the catalog survives ``restart()``.
    ``management_token`` is for agents whose ``extra_hcl`` turns ACLs on with default deny:
    the readiness check reads the catalog with it, since an anonymous read sees no nodes.
    """

    name = "consul"
    stop_signal = signal.SIGINT  # graceful leave
    start_timeout = CONSUL_START_TIMEOUT

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        persistent: bool = False,
        node_name: str = "comfy-test-consul",
        extra_hcl: str = "",
        management_token: str | None = None,
    ) -> None:
        super().__init__(binary, workdir)
        self.persistent = persistent
        self.node_name = node_name
        self.extra_hcl = extra_hcl
        self.management_token = management_token
        (
            self.http_port,
            self.dns_port,
            self.serf_lan_port,
            self.serf_wan_port,
            self.server_port,
        ) = free_ports(5)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "consul.hcl"

    def config_hcl(self) -> str:
        return f"""
node_name            = "{self.node_name}"
datacenter           = "dc1"
bind_addr            = "{LOOPBACK}"
client_addr          = "{LOOPBACK}"
advertise_addr       = "{LOOPBACK}"
disable_update_check = true
log_level            = "INFO"
ports {{
  http     = {self.http_port}
  https    = -1
  dns      = {self.dns_port}
  serf_lan = {self.serf_lan_port}
  serf_wan = {self.serf_wan_port}
  server   = {self.server_port}
  grpc     = -1
  grpc_tls = -1
}}
performance {{
  raft_multiplier = 1
}}
{self.extra_hcl}
"""

    def argv(self) -> list[str]:
        self.config_path.write_text(self.config_hcl())
        argv = [self.binary, "agent", "-config-file", str(self.config_path)]
        if self.persistent:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["-server", "-bootstrap-expect", "1", "-data-dir", str(self.data_dir)]
        else:
            argv += ["-dev"]
        return argv + ["-bind", LOOPBACK, "-client", LOOPBACK]

    def is_ready(self) -> bool:
        if not get_json(f"{self.url}/v1/status/leader"):
            return False
        nodes = self._catalog_nodes() or []
        return any(n.get("Node") == self.node_name for n in nodes)

    def _catalog_nodes(self) -> Any:
        url = f"{self.url}/v1/catalog/nodes"
        if self.management_token is None:
            return get_json(url)
        try:
            response = httpx.get(url, headers={"X-Consul-Token": self.management_token},
                                 timeout=2.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None
