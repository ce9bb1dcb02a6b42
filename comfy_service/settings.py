"""The settings of every comfy-service process, read from the environment once."""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    comfyui_urls: tuple[str, ...] = ()
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_workers: int = 1
    output_dir: pathlib.Path = pathlib.Path(".run/outputs")
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    node_slots: int = 2
    task_ttl_s: int = 7 * 24 * 3600
    max_attempts: int = 3
    default_timeout_s: float = 3600.0
    max_body_bytes: int = 1024 * 1024
    lease_ttl_s: float = 5.0
    log_level: str = "INFO"
    log_format: str = "json"
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    worker_metrics_port: int = 0
    public_url: str = ""
    discovery: str = "static"
    consul_addr: str = "http://127.0.0.1:8500"
    consul_token: str | None = field(default=None, repr=False)
    consul_service: str = "comfyui"
    workflows_dir: pathlib.Path = pathlib.Path(__file__).resolve().parent.parent / "workflows"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        get = environ.get
        log_format = get("LOG_FORMAT", "json").lower()
        if log_format not in ("json", "console"):
            raise ValueError("LOG_FORMAT must be json or console")
        discovery = get("DISCOVERY", "static").lower()
        if discovery not in ("static", "consul"):
            raise ValueError("DISCOVERY must be static or consul")
        consul_addr = get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        return cls(
            redis_url=get("REDIS_URL", cls.redis_url),
            comfyui_urls=tuple(u.rstrip("/") for u in _csv(get("COMFYUI_URLS"))),
            api_host=get("API_HOST", cls.api_host),
            api_port=int(get("API_PORT", str(cls.api_port))),
            api_workers=max(1, int(get("API_WORKERS", "1"))),
            output_dir=pathlib.Path(get("OUTPUT_DIR", str(cls.output_dir))).resolve(),
            api_keys=_csv(get("API_KEYS")),
            node_slots=max(1, int(get("NODE_SLOTS", str(cls.node_slots)))),
            task_ttl_s=int(get("TASK_TTL", str(cls.task_ttl_s))),
            max_attempts=max(1, int(get("MAX_ATTEMPTS", str(cls.max_attempts)))),
            default_timeout_s=float(get("DEFAULT_TIMEOUT_S", str(cls.default_timeout_s))),
            max_body_bytes=int(get("MAX_BODY_BYTES", str(cls.max_body_bytes))),
            lease_ttl_s=float(get("LEASE_TTL_S", str(cls.lease_ttl_s))),
            log_level=get("LOG_LEVEL", cls.log_level).upper(),
            log_format=log_format,
            worker_id=get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
            worker_metrics_port=int(get("WORKER_METRICS_PORT", "0")),
            public_url=get("PUBLIC_URL", "").rstrip("/"),
            discovery=discovery,
            consul_addr=consul_addr if "://" in consul_addr else f"http://{consul_addr}",
            consul_token=get("CONSUL_HTTP_TOKEN") or None,
            consul_service=get("CONSUL_SERVICE_NAME", cls.consul_service),
            workflows_dir=pathlib.Path(get("WORKFLOWS_DIR", str(cls.workflows_dir))).resolve(),
        )
