"""Settings of one sidecar process, read from the environment once."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from node_sidecar.meta import MetaPolicy


@dataclass(frozen=True)
class SidecarSettings:
    """One sidecar process; it follows one ComfyUI per URL (k when k share a GPU)."""

    comfyui_url: str
    comfyui_urls: tuple[str, ...] = ()
    # The address other machines reach ComfyUI at (Nomad: NOMAD_IP_<port>); default: the URL's.
    node_address: str | None = None
    drain_timeout_s: float = 600.0
    drain_settle_s: float = 1.0
    consul_addr: str = "http://127.0.0.1:8500"
    consul_token: str | None = field(default=None, repr=False)
    service_name: str = "comfyui"
    gpu_index: int = 0
    gpu_readings_file: str | None = None
    gpu_uuid_file: str | None = None
    slots: int = 2
    weight: float | None = None  # NODE_WEIGHT; unset: the workers learn the node's speed
    capabilities: tuple[str, ...] = ("txt2img", "storydiffusion")
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    probe_interval_s: float = 1.0
    ttl_s: float = 5.0
    # How soon each kind of Meta change is re-registered (node_sidecar/meta.py).
    meta_policy: MetaPolicy = field(default_factory=MetaPolicy)
    # Read the cordon/drain wish (KV) at most this often; 0: every probe. Each read is a server
    # read (N a second fleet-wide), but a drain must land while a prompt still waits.
    wish_interval_s: float = 0.0
    deregister_after: str = "1m"
    host_name: str = field(default_factory=socket.gethostname)

    @property
    def comfyui_host(self) -> str:
        return self.node_address or urlsplit(self.comfyui_url).hostname or "127.0.0.1"

    def instances(self) -> list[SidecarSettings]:
        """The settings for each ComfyUI this process follows."""
        return [replace(self, comfyui_url=url, comfyui_urls=(url,)) for url in self.comfyui_urls]

    @property
    def comfyui_port(self) -> int:
        return urlsplit(self.comfyui_url).port or 8188

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SidecarSettings:
        get = environ.get
        urls = tuple(u.strip().rstrip("/") for u in get("COMFYUI_URLS", "").split(",")
                     if u.strip()) or (get("COMFYUI_URL", "http://127.0.0.1:8188").rstrip("/"),)
        caps = tuple(c.strip() for c in get("NODE_CAPABILITIES", "txt2img,storydiffusion")
                     .split(",") if c.strip())
        consul_addr = get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        if "://" not in consul_addr:
            consul_addr = "http://" + consul_addr
        return cls(comfyui_url=urls[0], comfyui_urls=urls, consul_addr=consul_addr,
                   node_address=get("NODE_ADDRESS") or None,
                   drain_timeout_s=float(get("DRAIN_TIMEOUT_S", "600")),
                   drain_settle_s=float(get("DRAIN_SETTLE_S", "1")),
                   consul_token=get("CONSUL_HTTP_TOKEN") or None,
                   service_name=get("CONSUL_SERVICE_NAME", "comfyui"),
                   gpu_index=int(get("GPU_INDEX", "0")),
                   gpu_readings_file=get("GPU_READINGS_FILE") or None,
                   gpu_uuid_file=get("GPU_UUID_FILE") or None,
                   slots=int(get("NODE_SLOTS", "2")), weight=_weight(get("NODE_WEIGHT", "")),
                   capabilities=caps, listen_host=get("SIDECAR_HOST", "127.0.0.1"),
                   listen_port=int(get("SIDECAR_PORT", "0")),
                   probe_interval_s=float(get("SIDECAR_PROBE_INTERVAL_S", "1")),
                   ttl_s=float(get("SIDECAR_TTL_S", "5")),
                   meta_policy=MetaPolicy(
                       load_s=float(get("SIDECAR_META_LOAD_INTERVAL_S", "10")),
                       stale_s=float(get("SIDECAR_META_REFRESH_S", "60"))),
                   wish_interval_s=float(get("SIDECAR_WISH_INTERVAL_S", "0")),
                   host_name=get("NODE_HOSTNAME") or socket.gethostname())


def _weight(value: str) -> float | None:
    """NODE_WEIGHT: a node's relative speed set by hand; empty: the workers learn it."""
    return float(value) if value.strip() else None
