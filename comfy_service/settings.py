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
    # Outputs and inputs: OUTPUT_STORE=local (OUTPUT_DIR, one machine or a shared volume) or
    # s3 (any S3-compatible bucket; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
    output_store: str = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    presign_ttl_s: int = 0          # > 0: output downloads answer 302 to a presigned S3 URL
    store_timeout_s: float = 30.0   # one store request (a whole transfer: OUTPUT_TIMEOUT_S)
    max_upload_bytes: int = 20 * 1024 * 1024
    upload_ttl_s: int = 7 * 24 * 3600
    retention_interval_s: float = 60.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # admin keys included
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Per API key (0: unlimited): requests/s, bucket size, tasks queued or running at once.
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 0
    max_active_tasks: int = 0
    sse_keepalive_s: float = 15.0        # a comment on an idle event stream this often
    sse_max_streams_per_key: int = 20    # open event streams per API key (429 beyond)
    sse_max_streams: int = 1000          # open event streams per gateway process (429 beyond)
    api_key_limits: str = field(default="", repr=False)  # key=rate/burst/active;...
    # Webhooks (comfy_service/webhook_policy.py, actors/webhooks.py): the server secret each
    # key's signing secret is derived from (unset: from the key alone), hosts or CIDRs that may
    # be called although private, how long failures are retried, one request's time limit,
    # and the first retry's delay (doubling from there).
    webhook_secret: str = field(default="", repr=False)
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_retry_for_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0
    node_slots: int = 2
    task_ttl_s: int = 7 * 24 * 3600
    max_attempts: int = 3
    default_timeout_s: float = 3600.0
    max_body_bytes: int = 1024 * 1024
    max_batch: int = 100            # tasks in one POST /api/v1/batches
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
        output_store = get("OUTPUT_STORE", "local").lower()
        if output_store not in ("local", "s3"):
            raise ValueError("OUTPUT_STORE must be local or s3")
        if output_store == "s3" and not get("S3_BUCKET"):
            raise ValueError("OUTPUT_STORE=s3 needs S3_BUCKET")
        task_ttl_s = int(get("TASK_TTL", str(cls.task_ttl_s)))
        return cls(
            redis_url=get("REDIS_URL", cls.redis_url),
            comfyui_urls=tuple(u.rstrip("/") for u in _csv(get("COMFYUI_URLS"))),
            api_host=get("API_HOST", cls.api_host),
            api_port=int(get("API_PORT", str(cls.api_port))),
            api_workers=max(1, int(get("API_WORKERS", "1"))),
            output_dir=pathlib.Path(get("OUTPUT_DIR", str(cls.output_dir))).resolve(),
            output_store=output_store,
            s3_bucket=get("S3_BUCKET", ""),
            s3_prefix=get("S3_PREFIX", "").strip("/"),
            s3_endpoint=get("S3_ENDPOINT", "").rstrip("/"),
            s3_region=get("S3_REGION") or get("AWS_REGION") or cls.s3_region,
            s3_access_key=get("AWS_ACCESS_KEY_ID", ""),
            s3_secret_key=get("AWS_SECRET_ACCESS_KEY", ""),
            presign_ttl_s=max(0, int(get("PRESIGN_TTL_S", "0"))),
            store_timeout_s=float(get("STORE_TIMEOUT_S", str(cls.store_timeout_s))),
            max_upload_bytes=max(1, int(get("MAX_UPLOAD_BYTES", str(cls.max_upload_bytes)))),
            upload_ttl_s=int(get("UPLOAD_TTL", str(task_ttl_s))),
            retention_interval_s=float(get("RETENTION_INTERVAL_S",
                                           str(cls.retention_interval_s))),
            api_keys=tuple(dict.fromkeys(_csv(get("API_KEYS")) + _csv(get("ADMIN_API_KEYS")))),
            admin_api_keys=_csv(get("ADMIN_API_KEYS")),
            rate_limit_per_s=max(0.0, float(get("RATE_LIMIT_PER_S", "0"))),
            rate_limit_burst=max(0, int(get("RATE_LIMIT_BURST", "0"))),
            max_active_tasks=max(0, int(get("MAX_ACTIVE_TASKS", "0"))),
            sse_keepalive_s=max(0.5, float(get("SSE_KEEPALIVE_S", str(cls.sse_keepalive_s)))),
            sse_max_streams_per_key=max(1, int(get("SSE_MAX_STREAMS_PER_KEY",
                                                   str(cls.sse_max_streams_per_key)))),
            sse_max_streams=max(1, int(get("SSE_MAX_STREAMS", str(cls.sse_max_streams)))),
            api_key_limits=get("API_KEY_LIMITS", ""),
            webhook_secret=get("WEBHOOK_SECRET", ""),
            webhook_allow_hosts=_csv(get("WEBHOOK_ALLOW_HOSTS")),
            webhook_retry_for_s=max(0.0, float(get("WEBHOOK_RETRY_FOR_S",
                                                   str(cls.webhook_retry_for_s)))),
            webhook_timeout_s=max(0.1, float(get("WEBHOOK_TIMEOUT_S", str(cls.webhook_timeout_s)))),
            webhook_backoff_s=max(0.01, float(get("WEBHOOK_BACKOFF_S", str(cls.webhook_backoff_s)))),
            node_slots=max(1, int(get("NODE_SLOTS", str(cls.node_slots)))),
            task_ttl_s=task_ttl_s,
            max_attempts=max(1, int(get("MAX_ATTEMPTS", str(cls.max_attempts)))),
            default_timeout_s=float(get("DEFAULT_TIMEOUT_S", str(cls.default_timeout_s))),
            max_body_bytes=int(get("MAX_BODY_BYTES", str(cls.max_body_bytes))),
            max_batch=max(1, int(get("MAX_BATCH", str(cls.max_batch)))),
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
