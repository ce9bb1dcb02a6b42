"""One node as a worker sees it: its HTTP client and one long-lived WebSocket shared by all tasks.

Messages about a prompt are routed to whoever follows that prompt (by prompt_id, which is our
task id). When the socket drops, every follower is told the node was lost and the link keeps
reconnecting with backoff; the node counts as healthy only while its socket is up. A node that
is down is logged at its first failure (even one that was never up) and then every
DOWN_REPORT_EVERY_S while it stays down, each time with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import websockets

from actors.comfy_client import ComfyClient
from comfy_service.logs import event

log = logging.getLogger("actors.node_link")

LOST = {"type": "_node_lost"}  # what followers receive when the socket drops
CONNECT_TIMEOUT_S = 5.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
DOWN_REPORT_EVERY_S = 30.0  # while a node stays down, log it again this often (about 6 retries)
# Largest WebSocket frame accepted from a node. ComfyUI's binary preview frames are an encoded
# image of the latent (JPEG or PNG, up to the output size, so several MB for big or unencoded
# previews); 32 MiB leaves room for those and still bounds what one node can make a worker
# buffer. A bigger frame closes the socket (1009) and counts as node trouble.
WS_MAX_FRAME_BYTES = 32 * 1024 * 1024


class NodeLink:
    def __init__(self, name: str, base_url: str, client_id: str,
                 down_report_s: float = DOWN_REPORT_EVERY_S,
                 on_health: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.on_health = on_health  # told the node's name when it goes up or down
        self.base_url = base_url
        self.client_id = client_id
        self.http = ComfyClient(base_url)
        self.healthy = False
        self.queue_remaining = 0
        self.last_change = time.monotonic()
        self.object_info: dict[str, Any] | None = None
        self._followers: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self.down_report_s = down_report_s
        self._down_since: float | None = None  # first failure of the current outage
        self._down_reported = 0.0
        self._failures = 0

    def follow(self, prompt_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._followers[prompt_id] = queue
        return queue

    def unfollow(self, prompt_id: str) -> None:
        self._followers.pop(prompt_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"node-link:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._set_health(False, "link stopped")
        self._lose_all()
        await self.http.close()

    async def wait_up(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _set_health(self, healthy: bool, reason: str = "") -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            self.last_change = time.monotonic()
            if self.on_health is not None:
                self.on_health(self.name)
            event(log, "node.up" if healthy else "node.down",
                  logging.INFO if healthy else logging.WARNING, node=self.name, reason=reason)
        if healthy:
            self._down_since = None
            self._up.set()
        else:
            self._up.clear()

    def _failed(self, reason: str) -> None:
        """The socket failed or closed: say so at the outage's first failure, then periodically."""
        now = time.monotonic()
        if self.healthy or self._down_since is None:
            self._down_since = self._down_reported = now
            self._failures = 1
            if not self.healthy:  # never up: _set_health sees no change and would say nothing
                event(log, "node.down", logging.WARNING, node=self.name, reason=reason)
            self._set_health(False, reason)
            return
        self._failures += 1
        if now - self._down_reported >= self.down_report_s:
            self._down_reported = now
            event(log, "node.still_down", logging.WARNING, node=self.name, reason=reason,
                  failures=self._failures, down_for_s=round(now - self._down_since, 1))

    def _dispatch(self, message: dict[str, Any]) -> None:
        data = message.get("data") or {}
        if message.get("type") == "status":
            self.queue_remaining = data.get("status", {}).get("exec_info", {}).get(
                "queue_remaining", 0)
            return
        follower = self._followers.get(data.get("prompt_id", ""))
        if follower is not None:
            follower.put_nowait(message)

    def _lose_all(self) -> None:
        for follower in list(self._followers.values()):
            follower.put_nowait(LOST)

    async def _run(self) -> None:
        attempt = 0
        url = "ws" + self.base_url[4:] + f"/ws?clientId={self.client_id}"
        while True:
            try:
                async with websockets.connect(url, open_timeout=CONNECT_TIMEOUT_S,
                                              ping_interval=5, ping_timeout=5,
                                              close_timeout=2,
                                              max_size=WS_MAX_FRAME_BYTES) as ws:
                    if self.object_info is None:
                        self.object_info = await self.http.object_info()
                    attempt = 0
                    self._set_health(True)
                    async for frame in ws:
                        if isinstance(frame, str):
                            self._dispatch(json.loads(frame))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the socket or the node means: node down
                self._failed(f"{type(exc).__name__}: {exc}")
            else:
                self._failed("socket closed")
            self._lose_all()
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
