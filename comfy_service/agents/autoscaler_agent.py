"""`nomad-autoscaler agent` on loopback with nomad/autoscaler/local.hcl, pointed at given agents."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx

from comfy_service.agents.binaries import REPO_ROOT
from comfy_service.agents.process import LOOPBACK, Agent, free_ports

LOCAL_CONFIG = REPO_ROOT / "nomad" / "autoscaler" / "local.hcl"
AUTOSCALER_START_TIMEOUT = 30.0


class AutoscalerAgent(Agent):
    """The Nomad Autoscaler with the local config, the Nomad and Prometheus it is given, and
    its health endpoint on a free loopback port.

    ``policy_dir`` turns on the file policy source (cluster policies); ``nomad_source=False``
    leaves Nomad's job policies out, for an agent that only parses files.
    """

    name = "nomad-autoscaler"
    stop_signal = signal.SIGINT
    start_timeout = AUTOSCALER_START_TIMEOUT

    def __init__(self, binary: str, workdir: Path, *, nomad_url: str, prometheus_url: str,
                 policy_dir: Path | None = None, nomad_source: bool = True,
                 log_level: str = "debug") -> None:
        super().__init__(binary, workdir)
        for url in (nomad_url, prometheus_url):
            # The one rule for every autoscaler config here: nothing off this machine.
            if httpx.URL(url).host != LOOPBACK:
                raise ValueError(f"the local autoscaler talks to loopback only, not {url}")
        self.nomad_url = nomad_url
        self.prometheus_url = prometheus_url
        self.policy_dir = policy_dir
        self.nomad_source = nomad_source
        self.log_level = log_level
        (self.http_port,) = free_ports(1)
        self.override_path = self.workdir / "prometheus.hcl"

    def argv(self) -> list[str]:
        # The APM address has no flag: a second config file replaces the plugin's block.
        self.override_path.write_text(
            f'apm "prometheus" {{\n  driver = "prometheus"\n'
            f'  config = {{\n    address = "{self.prometheus_url}"\n  }}\n}}\n')
        argv = [self.binary, "agent", "-config", str(LOCAL_CONFIG),
                "-config", str(self.override_path), "-log-level", self.log_level,
                # JSON lines: the parsed policies come out whole (see `logged`).
                "-log-json",
                "-nomad-address", self.nomad_url,
                "-http-bind-address", LOOPBACK, "-http-bind-port", str(self.http_port)]
        if self.policy_dir is not None:
            argv += ["-policy-dir", str(self.policy_dir)]
        else:
            argv.append("-policy-source-disable-file")
        if not self.nomad_source:
            argv.append("-policy-source-disable-nomad")
        return argv

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def logged(self, message: str) -> list[dict[str, Any]]:
        """The JSON log records with this ``@message``, oldest first (with -log-level debug,
        "creating new policy handler" carries each parsed policy)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("@message") == message:
                        records.append(record)
        return records
