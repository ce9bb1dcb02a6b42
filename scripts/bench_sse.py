"""`make bench BENCH=sse`: Server-Sent Event streams held open at once on one gateway process.

One gateway process (API_WORKERS=1) and Redis, no worker: tasks stay queued, so their streams
stay open and idle (a keep-alive comment every SSE_KEEPALIVE_S). For 0, 100, 500 and 1,000 open
streams: the gateway's resident memory (RSS from /proc), the memory per stream, and the time a
plain GET /api/v1/tasks/{id} takes meanwhile (is the process still responsive). Each stream
holds one Redis connection in a blocking read. Prints Markdown rows.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import statistics
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = ("| open SSE streams (one gateway process) | gateway RSS | per stream | "
          "GET task p50 / max meanwhile |\n| --- | --- | --- | --- |")
LEVELS = (0, 100, 500, 1000)


def _rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _hold(url: str, task_id: str, opened: asyncio.Event, stop: asyncio.Event,
                client: httpx.AsyncClient) -> None:
    async with client.stream("GET", f"{url}/api/v1/tasks/{task_id}/events") as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {(await response.aread())[:300]!r}")
        lines = response.aiter_lines()
        await anext(lines)  # the opening event's first line: the stream is served
        opened.set()
        await stop.wait()


async def _latencies(url: str, task_id: str, client: httpx.AsyncClient) -> list[float]:
    found = []
    for _ in range(20):
        started = time.perf_counter()
        (await client.get(f"{url}/api/v1/tasks/{task_id}")).raise_for_status()
        found.append((time.perf_counter() - started) * 1000)
    return found


async def _measure(url: str, pid: int, task_ids: list[str]) -> list[str]:
    rows, baseline = [], 0.0
    limits = httpx.Limits(max_connections=max(LEVELS) + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop = asyncio.Event()
        holders: list[asyncio.Task[None]] = []
        try:
            for level in LEVELS:
                events = []
                while len(holders) < level:
                    opened = asyncio.Event()
                    events.append(opened)
                    holders.append(asyncio.create_task(
                        _hold(url, task_ids[len(holders)], opened, stop, client)))
                waiting = [asyncio.create_task(e.wait()) for e in events]
                if waiting:
                    await asyncio.wait([*waiting, *holders], timeout=120,
                                       return_when=asyncio.FIRST_EXCEPTION)
                for holder in holders:
                    if holder.done() and holder.exception():
                        raise RuntimeError("a stream failed") from holder.exception()
                if not all(e.is_set() for e in events):
                    raise TimeoutError(f"{level} streams did not all open")
                rss = _rss_mb(pid)
                baseline = baseline or rss
                per = f"{(rss - baseline) * 1024 / level:.0f} KiB" if level else "-"
                times = await _latencies(url, task_ids[0], client)
                rows.append(f"| {level} | {rss:.0f} MB | {per} | "
                            f"{statistics.median(times):.1f} / {max(times):.1f} ms |")
        finally:
            stop.set()
            await asyncio.gather(*holders, return_exceptions=True)
    return rows


def bench_sse(root: pathlib.Path) -> list[str]:
    from tests.support.service import Stack, txt2img_body
    stack = Stack(root / "sse", nodes=0, workers=0, env={
        "API_WORKERS": "1", "LOG_LEVEL": "WARNING", "SSE_MAX_STREAMS_PER_KEY": "5000",
        "SSE_KEEPALIVE_S": "15"})
    try:
        assert stack.gateway is not None
        pid = stack.gateway.proc.pid
        body = json.dumps(txt2img_body(steps=1)).encode()
        task_ids = [stack.http.post("/api/v1/generate", content=body, headers={
            "Content-Type": "application/json"}).json()["task_id"] for _ in range(max(LEVELS))]
        return asyncio.run(_measure(stack.url, pid, task_ids))
    finally:
        stack.stop()
