"""HTTP client for one ComfyUI node. Raises our errors, never httpx's (translated at the edge)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx

from comfy_service.errors import (
    InputRejected,
    InvalidWorkflow,
    NodeLost,
    OutputStoreFailed,
    OutputTooLarge,
)
from comfy_service.storage import BlobStore, StoreFailure
from comfy_service.tls import shared_context

CHUNK_BYTES = 1024 * 1024
OBJECT_INFOS_KEPT = 64  # distinct /object_info answers kept parsed (versions x plugin sets)
_OBJECT_INFOS: dict[bytes, dict[str, Any]] = {}


@dataclass(frozen=True)
class Downloaded:
    size: int
    sha256: str


@dataclass
class _Tally:
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class ComfyClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                       transport=transport, verify=shared_context())

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
        """The node's classes. Nodes of one ComfyUI version and plugin set answer the same
        bytes (30 KB to 750 KB of JSON, several times that parsed), so each distinct answer
        is parsed once per process and shared read-only: a worker following 1,000 nodes
        parsed and kept 1,000 copies."""
        body = (await self._request("GET", "/object_info")).content
        digest = hashlib.sha256(body).digest()
        info = _OBJECT_INFOS.get(digest)
        if info is None:
            info = json.loads(body)
            if len(_OBJECT_INFOS) >= OBJECT_INFOS_KEPT:
                _OBJECT_INFOS.pop(next(iter(_OBJECT_INFOS)))
            _OBJECT_INFOS[digest] = info
        return info

    async def system_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self._request("GET", "/system_stats")).json()
        return stats

    async def copy_output(self, file: dict[str, str], store: BlobStore, key: str,
                          content_type: str, max_bytes: int, timeout_s: float) -> Downloaded:
        """Stream an output file from the node into the store under `key`: at most `max_bytes`
        and `timeout_s` in all, never held whole in memory. On any failure the store keeps
        nothing of it (the write is aborted), so a partial file is never served."""
        tally = _Tally()
        chunks = self._view(file, max_bytes, tally)
        try:
            async with asyncio.timeout(timeout_s):
                await store.put(key, chunks, content_type)
        except TimeoutError as exc:
            raise NodeLost(f"copying {file['filename']} from {self.base_url} took over "
                           f"{timeout_s:g} s") from exc
        except StoreFailure as exc:
            raise OutputStoreFailed(f"storing {file['filename']} failed: {exc}",
                                    {"store": store.where}) from exc
        finally:
            # Close the stream here, on this loop, so its HTTP response is released now and not
            # by a collector at exit (which aborted the process); one the store still awaits
            # (cancelled mid-chunk) is closed when the store drops it.
            if not getattr(chunks, "ag_running", False):  # an async generator object
                await chunks.aclose()
        return Downloaded(tally.size, tally.digest.hexdigest())

    async def _view(self, file: dict[str, str], max_bytes: int,
                    tally: _Tally) -> AsyncGenerator[bytes, None]:
        name = file["filename"]
        params = {"filename": name, "subfolder": file.get("subfolder", ""),
                  "type": file.get("type", "output")}
        try:
            async with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code != 200:
                    raise NodeLost(f"/view {name} answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(name, max_bytes, int(declared))
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    tally.size += len(chunk)
                    if tally.size > max_bytes:  # no or a wrong Content-Length: count it
                        raise _too_large(name, max_bytes, tally.size)
                    tally.digest.update(chunk)
                    yield chunk
        except httpx.HTTPError as exc:
            raise NodeLost(f"{self.base_url} /view {name} failed: {type(exc).__name__}: {exc}"
                           ) from exc
        except RuntimeError as exc:
            raise self._closed(exc) from exc

    async def upload_input(self, name: str, subfolder: str, data: bytes,
                           content_type: str) -> str:
        """POST /upload/image (as ComfyUI's own editor does) into the node's input folder;
        returns the value LoadImage takes for it."""
        response = await self._request(
            "POST", "/upload/image",
            files={"image": (name, data, content_type)},
            data={"type": "input", "subfolder": subfolder, "overwrite": "true"})
        if response.status_code != 200:
            raise InputRejected(f"the node refused the input file ({response.status_code})",
                                {"status": response.status_code, "body": response.text[:300]})
        body = response.json()
        stored_as = f"{body.get('subfolder') or ''}/{body['name']}".lstrip("/")
        return stored_as

    def _closed(self, exc: RuntimeError) -> Exception:
        """The link to the node stopped (it left the healthy set) while a request was on its
        way: httpx says so with a RuntimeError. That is the node lost, not a bug."""
        if self._http.is_closed:
            return NodeLost(f"{self.base_url}: the link to the node was closed")
        return exc


def _too_large(name: str, max_bytes: int, seen: int) -> OutputTooLarge:
    return OutputTooLarge(f"output {name} is larger than MAX_OUTPUT_BYTES ({max_bytes} bytes)",
                          {"filename": name, "max_bytes": max_bytes, "bytes_at_least": seen})
