"""`comfy-service worker`: Dramatiq consumers for admission plus the asyncio scheduling loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence

import dramatiq
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from actors.broker import build_broker
from actors.scheduler import Scheduler
from comfy_service import logs
from comfy_service.logs import event
from comfy_service.open_files import raise_open_files_limit
from comfy_service.redis_client import connect
from comfy_service.settings import Settings
from comfy_service.storage import BlobStore, StoreMismatch, open_store

log = logging.getLogger("actors.worker")


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(settings.redis_url, socket_timeout=10)
    blobs = open_store(settings)
    try:
        if not await _store_checked(blobs, redis, stop):
            return
        event(log, "worker.store", kind=blobs.kind, where=blobs.where)
        await Scheduler(settings, redis, blobs).run(stop)
    finally:
        await blobs.aclose()
        await redis.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _store_checked(blobs: BlobStore, redis: aioredis.Redis, stop: asyncio.Event) -> bool:
    """Wait until the store is shown to be the one the other processes use (False: stopped
    first); a local directory that is not theirs ends the worker, saying why."""
    check = asyncio.create_task(blobs.wait_shared(redis))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({check, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not check.done():
        check.cancel()
        return False
    try:
        check.result()
    except StoreMismatch as exc:
        event(log, "worker.store_mismatch", logging.ERROR, reason=str(exc))
        raise SystemExit(str(exc)) from None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env(os.environ)
    logs.setup(settings.log_level, settings.log_format)
    if settings.discovery == "static" and not settings.comfyui_urls:
        raise SystemExit("COMFYUI_URLS is empty: the worker has no ComfyUI node to use "
                         "(or set DISCOVERY=consul)")
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.api_host)
    broker = build_broker(settings.redis_url)
    import actors.admission  # noqa: F401  (declares the actor on the broker just built)

    # worker_timeout bounds the consumer's idle polling backoff, i.e. submit-to-admit latency.
    consumers = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    consumers.start()
    # Two sockets per node followed (its WebSocket and an HTTP connection), more than the
    # common soft limit of 1,024 with a few hundred nodes.
    _, open_files = raise_open_files_limit()
    event(log, "worker.consumers_started", worker=settings.worker_id, open_files=open_files)
    try:
        asyncio.run(_serve(settings))
    finally:
        consumers.stop(timeout=5_000)
        broker.close()
    return 0
