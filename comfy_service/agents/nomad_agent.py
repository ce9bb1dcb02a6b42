"""`nomad agent -dev` (server and client, raw_exec) or a server-only agent, on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from comfy_service.agents.process import LOOPBACK, Agent, free_ports, get_json, processes_under

NOMAD_START_TIMEOUT = 90.0


DEFAULT_CLIENT_OPTIONS = {
    # The cloud fingerprinters probe 169.254.169.254 (never a target here), and
    # env_aws fails the whole client when AWS_CA_BUNDLE is set: "failed to setup
    # IMDS client: unable to add custom RootCAs HTTPClient, has no
    # WithTransportOptions, *http.Client".
    "fingerprint.denylist": "env_aws,env_gce,env_azure,env_digitalocean",
    # Only raw_exec is used by tests; skip fingerprinting docker/java/qemu/exec.
    "driver.denylist": "docker,java,qemu,exec",
}


class NomadAgent(Agent):
    """``nomad agent -dev`` (server + client, raw_exec enabled) on free loopback ports.

    Dev mode matters beyond convenience: on shutdown a dev client destroys its
    allocations, so task processes do not outlive the agent. ``client=False`` runs a
    single-node server only (job validation, planning, registration without
    placement). ``consul_http_addr=None`` points Nomad's Consul integration at a
    closed port.
    """

    name = "nomad"
    stop_signal = signal.SIGINT
    start_timeout = NOMAD_START_TIMEOUT

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        consul_http_addr: str | None = None,
        node_name: str = "comfy-test-nomad",
        client: bool = True,
        client_options: dict[str, str] | None = None,
        extra_hcl: str = "",
        max_kill_timeout: str = "30s",
    ) -> None:
        super().__init__(binary, workdir)
        self.max_kill_timeout = max_kill_timeout
        self.consul_http_addr = consul_http_addr
        self.node_name = node_name
        self.client = client
        self.client_options = {**DEFAULT_CLIENT_OPTIONS, **(client_options or {})}
        self.extra_hcl = extra_hcl
        self.http_port, self.rpc_port, self.serf_port, self.closed_port = free_ports(4)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "nomad.hcl"
        self.node_id: str | None = None

    def config_hcl(self) -> str:
        if self.consul_http_addr:
            consul = f"""
consul {{
  address = "{self.consul_http_addr}"
}}"""
        else:
            # Nomad always talks to some Consul (default 127.0.0.1:8500, where a
            # developer's `make up` may run one): point it at a closed port instead.
            consul = f"""
consul {{
  address          = "{LOOPBACK}:{self.closed_port}"
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}}"""
        options = "\n".join(f"    {json.dumps(k)} = {json.dumps(v)}" for k, v in self.client_options.items())
        client = (
            f"""
client {{
  enabled           = true
  max_kill_timeout  = "{self.max_kill_timeout}"
  network_interface = "lo"
  servers           = ["{LOOPBACK}:{self.rpc_port}"]
  options {{
{options}
  }}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}"""
            if self.client
            else f"""
client {{
  enabled = false
  options {{
{options}
  }}
}}"""
        )
        return f"""
name                 = "{self.node_name}"
region               = "global"
datacenter           = "dc1"
data_dir             = "{self.data_dir}"
bind_addr            = "{LOOPBACK}"
disable_update_check = true
log_level            = "INFO"
advertise {{
  http = "{LOOPBACK}"
  rpc  = "{LOOPBACK}"
  serf = "{LOOPBACK}"
}}
ports {{
  http = {self.http_port}
  rpc  = {self.rpc_port}
  serf = {self.serf_port}
}}
server {{
  enabled          = true
  bootstrap_expect = 1
}}
{client}
{consul}
{self.extra_hcl}
"""

    def argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_hcl())
        # -dev would force the client on; a server-only agent runs without it.
        dev = ["-dev"] if self.client else []
        return [self.binary, "agent", *dev, "-config", str(self.config_path)]

    def is_ready(self) -> bool:
        if not get_json(f"{self.url}/v1/status/leader"):
            return False
        if not self.client:
            return True
        for node in get_json(f"{self.url}/v1/nodes") or []:
            if node.get("Name") != self.node_name or node.get("Status") != "ready":
                continue
            raw_exec = (node.get("Drivers") or {}).get("raw_exec") or {}
            if raw_exec.get("Detected") and raw_exec.get("Healthy"):
                self.node_id = node["ID"]
                return True
        return False

    def _after_stop(self) -> None:
        # A dev client destroys its allocations on shutdown; after a SIGKILL it
        # cannot, so reap task processes still running from its alloc dirs.
        for pid in processes_under(self.data_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def cli(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``nomad <args>`` against this agent."""
        env = self._env()
        env["NOMAD_ADDR"] = self.url
        return subprocess.run(
            [self.binary, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )


