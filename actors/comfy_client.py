"""HTTP client for one ComfyUI node. Raises our errors, never httpx's (translated at the edge)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
from dataclasses import dataclass
from typing import IO, Any

import httpx

from comfy_service.errors import InvalidWorkflow, NodeLost, OutputTooLarge

CHUNK_BYTES = 1024 * 1024  # one thread hop per MiB written: disk writes never block the loop


@dataclass(frozen=True)
class Downloaded:
    size: int
    sha256: str


class ComfyClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                       transport=transport)

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NodeLost(f"{self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            raise self._closed(exc) from exc
        if response.status_code >= 500:
            raise NodeLost(f"{self.base_url}{path} answered {response.status_code}")
        return response

    async def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        """POST /prompt with our task id as prompt_id, so the task can be found again."""
        response = await self._request("POST", "/prompt", json={
            "prompt": graph, "prompt_id": prompt_id, "client_id": client_id})
        if response.status_code == 400:
            body = response.json()
            raise InvalidWorkflow(body.get("error", {}).get("message", "invalid workflow"),
                                  {"error": body.get("error"),
                                   "node_errors": body.get("node_errors")})
        if response.status_code != 200:
            raise NodeLost(f"POST /prompt answered {response.status_code}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        response = await self._request("GET", f"/history/{prompt_id}")
        entry = response.json().get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        body = (await self._request("GET", "/queue")).json()
        return ([item[1] for item in body.get("queue_running", [])],
                [item[1] for item in body.get("queue_pending", [])])

    async def delete_pending(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """Targeted interrupt: stops the prompt only if it is the one running."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def object_info(self) -> dict[str, Any]:
        info: dict[str, Any] = (await self._request("GET", "/object_info")).json()
        return info

    async def system_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self._request("GET", "/system_stats")).json()
        return stats

    async def download(self, image: dict[str, str], dest: pathlib.Path, max_bytes: int,
                       timeout_s: float) -> Downloaded:
        """Stream an output file into `dest`, at most `max_bytes` and `timeout_s` in all.

        It is written off the event loop under a temporary name and renamed only once complete,
        so a partial file is never served; on any failure the temporary file is removed.
        """
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        # What an earlier attempt left when its worker was killed mid-download (one worker
        # owns a task at a time, so any other partial file of this output is stale).
        await asyncio.to_thread(_drop_stale_partials, dest)
        handle = await asyncio.to_thread(open, partial, "wb")
        try:
            async with asyncio.timeout(timeout_s):
                saved = await self._stream_into(handle, image, max_bytes)
            await asyncio.to_thread(_finish, handle, partial, dest)
        except TimeoutError as exc:
            _discard(handle, partial)
            raise NodeLost(f"downloading {image['filename']} from {self.base_url} took over "
                           f"{timeout_s:g} s") from exc
        except BaseException:
            _discard(handle, partial)  # also on cancellation: close and unlink, both quick
            raise
        return saved

    async def _stream_into(self, handle: IO[bytes], image: dict[str, str],
                           max_bytes: int) -> Downloaded:
        name, digest, size = image["filename"], hashlib.sha256(), 0
        params = {"filename": name, "subfolder": image.get("subfolder", ""),
                  "type": image.get("type", "output")}
        try:
            async with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code != 200:
                    raise NodeLost(f"/view {name} answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(name, max_bytes, int(declared))
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:  # no or a wrong Content-Length: count what arrives
                        raise _too_large(name, max_bytes, size)
                    await asyncio.to_thread(_write, handle, digest, chunk)
        except httpx.HTTPError as exc:
            raise NodeLost(f"{self.base_url} /view {name} failed: {type(exc).__name__}: {exc}"
                           ) from exc
        except RuntimeError as exc:
            raise self._closed(exc) from exc
        return Downloaded(size, digest.hexdigest())

    def _closed(self, exc: RuntimeError) -> Exception:
        """The link to the node stopped (it left the healthy set) while a request was on its
        way: httpx says so with a RuntimeError. That is the node lost, not a bug."""
        if self._http.is_closed:
            return NodeLost(f"{self.base_url}: the link to the node was closed")
        return exc


def _drop_stale_partials(dest: pathlib.Path) -> None:
    for stale in dest.parent.glob(f".{dest.name}.*.partial"):
        stale.unlink(missing_ok=True)


def _too_large(name: str, max_bytes: int, seen: int) -> OutputTooLarge:
    return OutputTooLarge(f"output {name} is larger than MAX_OUTPUT_BYTES ({max_bytes} bytes)",
                          {"filename": name, "max_bytes": max_bytes, "bytes_at_least": seen})


def _write(handle: IO[bytes], digest: Any, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


def _finish(handle: IO[bytes], partial: pathlib.Path, dest: pathlib.Path) -> None:
    handle.close()
    os.replace(partial, dest)


def _discard(handle: IO[bytes], partial: pathlib.Path) -> None:
    handle.close()
    partial.unlink(missing_ok=True)
