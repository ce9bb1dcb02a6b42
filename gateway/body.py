"""Reading a request body: media type, size limit with a lingering close, bounded JSON."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import ClientDisconnect, Request

from comfy_service.errors import PayloadTooLarge, UnsupportedMediaType
from gateway.limits import parse_json

# A refused body is still read and dropped, up to this much and this long, so that a client
# that sends it all before reading (no `Expect: 100-continue`: urllib, many libraries) reads
# our 413 instead of a connection reset (what nginx's lingering close does).
LINGER_BYTES = 32 * 1024 * 1024
LINGER_S = 5.0


async def linger(request: Request, declared: int | None) -> None:
    """Read and drop the rest of a refused body within LINGER_BYTES and LINGER_S."""
    if declared is not None and declared > LINGER_BYTES:
        return  # too much to wait for: the connection closes after the 413
    dropped = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(LINGER_S):
            async for chunk in request.stream():
                dropped += len(chunk)
                if dropped > LINGER_BYTES:
                    return


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, limit: int) -> tuple[Any, bytes]:
    """The JSON body: 415 unless JSON, 413 past `limit` bytes, 400 if invalid or too deep."""
    if media_type(request) != "application/json":
        raise UnsupportedMediaType("send the body as application/json",
                                   {"content_type": media_type(request) or None})
    raw = await read_bounded(request, limit)
    return parse_json(raw), raw


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, or 413 past `limit` bytes (after a lingering close)."""
    too_large = PayloadTooLarge(f"the body is larger than {limit} bytes", {"limit": limit})
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        await linger(request, int(declared))
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await linger(request, int(declared) if declared and declared.isdigit() else None)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
