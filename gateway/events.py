"""GET /api/v1/tasks/{id}/events: a task's events as Server-Sent Events.

The stream opens with the task's state now (event `state`, its id the task's last event id),
then sends every event after it from the task's Redis stream (actors/task_events.py), each with
its stream id as the SSE id; a client that reconnects with Last-Event-ID gets every event after
that one, none twice. An idle stream gets a comment every SSE_KEEPALIVE_S so proxies keep it
open; the stream ends after the `end` event. Any gateway process serves any task.

Open streams are counted per API key in Redis (a ZSET of stream ids with an expiry refreshed
while open, so a gateway that dies does not leak them); past SSE_MAX_STREAMS_PER_KEY: 429. Each
open stream holds one Redis connection in a blocking read, so a process serves at most
SSE_MAX_STREAMS of them (429 beyond; more gateway processes serve more).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator

import anyio

from actors import task_events
from actors.store import TaskStore
from actors.tasks import TaskRecord
from comfy_service import constants as c
from comfy_service.errors import TooManyStreams
from comfy_service.redis_client import connect
from comfy_service.settings import Settings

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
STREAMS_KEY = c.KEY_PREFIX + "streams:{tenant}"  # ZSET stream id -> expiry (ms)
STREAM_LEASE_S = 60.0


def resume_from(last_event_id: str | None) -> str | None:
    """The stream id to resume after, from a Last-Event-ID header; None: start afresh (an id
    that is not one of ours is ignored, as the SSE spec lets a server do)."""
    if last_event_id and STREAM_ID.match(last_event_id.strip()):
        return last_event_id.strip()
    return None


def frame(event: str, data: str, event_id: str | None = None) -> bytes:
    """One SSE message (data is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


class EventStreams:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Its own connections: each open stream holds one in a blocking read for up to the
        # keep-alive interval, longer than the API's Redis timeout allows.
        # One per open stream, a few for opening and closing them.
        self.redis = connect(settings.redis_url, socket_timeout=settings.sse_keepalive_s + 5,
                             max_connections=settings.sse_max_streams + 16)
        self.store = TaskStore(self.redis, settings.task_ttl_s)
        self.open_here = 0  # streams this process serves now

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def open(self, tenant: str | None) -> str:
        """Count one more open stream for the key, or 429 past the limit (per key, across
        gateways; and per process, whose Redis connections are bounded)."""
        if self.open_here >= self.settings.sse_max_streams:
            raise TooManyStreams(f"this gateway process serves {self.settings.sse_max_streams} "
                                 "event streams already", retry_after_s=1)
        key = STREAMS_KEY.format(tenant=tenant or "anonymous")
        stream = uuid.uuid4().hex
        now = time.time() * 1000
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {stream: now + STREAM_LEASE_S * 1000})
            pipe.zcard(key)
            pipe.pexpire(key, int(STREAM_LEASE_S * 1000))
            *_, count, _ = await pipe.execute()
        if count > self.settings.sse_max_streams_per_key:
            await self.redis.zrem(key, stream)
            raise TooManyStreams(
                f"at most {self.settings.sse_max_streams_per_key} open event streams per key",
                retry_after_s=self.settings.sse_keepalive_s)
        self.open_here += 1
        return stream

    async def _renew(self, tenant: str | None, stream: str) -> None:
        key = STREAMS_KEY.format(tenant=tenant or "anonymous")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {stream: time.time() * 1000 + STREAM_LEASE_S * 1000})
            pipe.pexpire(key, int(STREAM_LEASE_S * 1000))
            await pipe.execute()

    async def close(self, tenant: str | None, stream: str) -> None:
        self.open_here -= 1
        await self.redis.zrem(STREAMS_KEY.format(tenant=tenant or "anonymous"), stream)

    async def follow(self, record: TaskRecord, cursor: str, tenant: str | None, stream: str,
                     resumed: bool) -> AsyncIterator[bytes]:
        """The SSE body: the state now (unless resuming), then the events after `cursor`."""
        try:
            if not resumed:
                yield frame(task_events.STATE, json.dumps(task_events.state_of(record)),
                            cursor)
                if record.final:  # nothing more will come: say how it ended, and stop
                    for event, data in task_events.final_events(record):
                        yield frame(event, json.dumps(data), cursor)
                    return
            block_ms = int(self.settings.sse_keepalive_s * 1000)
            renewed = time.monotonic()
            while True:
                found = await self.store.events_after(record.task_id, cursor, block_ms)
                if not found:
                    yield b": keep-alive\n\n"
                for event_id, name, payload in found:
                    cursor = event_id
                    yield frame(name, payload, event_id)
                    if name == task_events.END:
                        return
                if time.monotonic() - renewed > STREAM_LEASE_S / 3:
                    await self._renew(tenant, stream)
                    renewed = time.monotonic()
        finally:
            with anyio.CancelScope(shield=True):  # also when the client went away
                await self.close(tenant, stream)
