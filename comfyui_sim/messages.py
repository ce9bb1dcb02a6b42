"""The WebSocket side of the simulator: connected clients and the ordered outgoing message stream.

Like ComfyUI, every message goes through one queue drained by one publisher task, so clients see
events in exactly the order the executor produced them.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


@dataclass
class Client:
    send_text: Callable[[str], Awaitable[None]]
    send_bytes: Callable[[bytes], Awaitable[None]]
    feature_flags: dict[str, Any] = field(default_factory=dict)


class Hub:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self._outbox: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()
        self.paused = asyncio.Event()
        self.paused.set()  # set means "flowing"; cleared while a hang fault holds messages

    def connect(self, sid: str, client: Client) -> None:
        self.clients.pop(sid, None)  # reconnecting with the same clientId replaces the old socket
        self.clients[sid] = client

    def disconnect(self, sid: str, client: Client) -> None:
        if self.clients.get(sid) is client:
            del self.clients[sid]

    def supports_preview_metadata(self, sid: str | None) -> bool:
        client = self.clients.get(sid) if sid else None
        return bool(client and client.feature_flags.get("supports_preview_metadata"))

    def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        """Queue a message: to one client when sid is given, else to every client."""
        self._outbox.put_nowait((event, data, sid))

    async def send_now(self, sid: str, event: str, data: Any) -> None:
        client = self.clients.get(sid)
        if client is not None:
            await _deliver(client.send_text, json.dumps({"type": event, "data": data}))

    async def publish_forever(self) -> None:
        while True:
            event, data, sid = await self._outbox.get()
            await self.paused.wait()
            if isinstance(event, int):
                frame: str | bytes = struct.pack(">I", event) + data
            else:
                frame = json.dumps({"type": event, "data": data})
            targets = list(self.clients.values()) if sid is None else (
                [self.clients[sid]] if sid in self.clients else [])
            for client in targets:
                sender = client.send_bytes if isinstance(frame, bytes) else client.send_text
                await _deliver(sender, frame)


async def _deliver(sender: Callable[[Any], Awaitable[None]], frame: Any) -> None:
    try:
        await sender(frame)
    except Exception:  # a client that went away must not stop the stream for the others
        pass


def preview_frames(image: bytes, metadata: dict[str, Any]) -> tuple[bytes, bytes]:
    """(legacy type-1 body, type-4 body with metadata) for one JPEG preview."""
    legacy = struct.pack(">I", 1) + image
    meta = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
    return legacy, struct.pack(">I", len(meta)) + meta + image
