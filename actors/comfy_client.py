"""HTTP client for one ComfyUI node. Raises our errors, never httpx's (translated at the edge)."""

from __future__ import annotations

from typing import Any

import httpx

from comfy_service.errors import InvalidWorkflow, NodeLost


class ComfyClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NodeLost(f"{self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
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

    async def download(self, image: dict[str, str]) -> bytes:
        response = await self._request("GET", "/view", params={
            "filename": image["filename"], "subfolder": image.get("subfolder", ""),
            "type": image.get("type", "output")})
        if response.status_code != 200:
            raise NodeLost(f"/view {image['filename']} answered {response.status_code}")
        return response.content
