"""Settings of one sidecar process, read from the environment once."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SidecarSettings:
    comfyui_url: str
    consul_addr: str = "http://127.0.0.1:8500"
    consul_token: str | None = field(default=None, repr=False)
    service_name: str = "comfyui"
    gpu_index: int = 0
    gpu_readings_file: str | None = None
    slots: int = 2
    weight: float = 1.0
    capabilities: tuple[str, ...] = ("txt2img", "storydiffusion")
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    probe_interval_s: float = 1.0
    ttl_s: float = 5.0
    meta_min_interval_s: float = 2.0
    deregister_after: str = "1m"
    host_name: str = field(default_factory=socket.gethostname)

    @property
    def comfyui_host(self) -> str:
        return urlsplit(self.comfyui_url).hostname or "127.0.0.1"

    @property
    def comfyui_port(self) -> int:
        return urlsplit(self.comfyui_url).port or 8188

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SidecarSettings:
        get = environ.get
        url = get("COMFYUI_URL", "http://127.0.0.1:8188").rstrip("/")
        caps = tuple(c.strip() for c in get("NODE_CAPABILITIES", "txt2img,storydiffusion")
                     .split(",") if c.strip())
        consul_addr = get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        if "://" not in consul_addr:
            consul_addr = "http://" + consul_addr
        return cls(comfyui_url=url, consul_addr=consul_addr,
                   consul_token=get("CONSUL_HTTP_TOKEN") or None,
                   service_name=get("CONSUL_SERVICE_NAME", "comfyui"),
                   gpu_index=int(get("GPU_INDEX", "0")),
                   gpu_readings_file=get("GPU_READINGS_FILE") or None,
                   slots=int(get("NODE_SLOTS", "2")), weight=float(get("NODE_WEIGHT", "1")),
                   capabilities=caps, listen_host=get("SIDECAR_HOST", "127.0.0.1"),
                   listen_port=int(get("SIDECAR_PORT", "0")),
                   probe_interval_s=float(get("SIDECAR_PROBE_INTERVAL_S", "1")),
                   ttl_s=float(get("SIDECAR_TTL_S", "5")),
                   host_name=get("NODE_HOSTNAME") or socket.gethostname())
