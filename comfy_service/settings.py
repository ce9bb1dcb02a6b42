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
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # admin keys included
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Per API key (0: unlimited): requests/s, bucket size, tasks queued or running at once.
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 0
    max_active_tasks: int = 0
    api_key_limits: str = field(default="", repr=False)  # key=rate/burst/active;...
    node_slots: int = 2
    task_ttl_s: int = 7 * 24 * 3600
    max_attempts: int = 3
    default_timeout_s: float = 3600.0
    max_body_bytes: int = 1024 * 1024
    max_output_bytes: int = 512 * 1024 * 1024
    output_timeout_s: float = 300.0
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
            api_keys=tuple(dict.fromkeys(_csv(get("API_KEYS")) + _csv(get("ADMIN_API_KEYS")))),
            admin_api_keys=_csv(get("ADMIN_API_KEYS")),
            rate_limit_per_s=max(0.0, float(get("RATE_LIMIT_PER_S", "0"))),
            rate_limit_burst=max(0, int(get("RATE_LIMIT_BURST", "0"))),
            max_active_tasks=max(0, int(get("MAX_ACTIVE_TASKS", "0"))),
            api_key_limits=get("API_KEY_LIMITS", ""),
            node_slots=max(1, int(get("NODE_SLOTS", str(cls.node_slots)))),
            task_ttl_s=int(get("TASK_TTL", str(cls.task_ttl_s))),
            max_attempts=max(1, int(get("MAX_ATTEMPTS", str(cls.max_attempts)))),
            default_timeout_s=float(get("DEFAULT_TIMEOUT_S", str(cls.default_timeout_s))),
            max_body_bytes=int(get("MAX_BODY_BYTES", str(cls.max_body_bytes))),
            max_output_bytes=max(1, int(get("MAX_OUTPUT_BYTES", str(cls.max_output_bytes)))),
            output_timeout_s=float(get("OUTPUT_TIMEOUT_S", str(cls.output_timeout_s))),
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
