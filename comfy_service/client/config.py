"""How a client reaches the service: URL, API key, timeouts and retries (one frozen object)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from comfy_service import __version__
from comfy_service.client.protocol import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8080"  # where `make up` serves the gateway (API_PORT)


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_URL
    api_key: str | None = field(default=None, repr=False)  # never shown
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(30.0, connect=5.0))
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], api_key: str | None = None,
                 base_url: str | None = None) -> ClientConfig:
        """COMFY_SERVICE_URL and COMFY_SERVICE_API_KEY, unless given here."""
        return cls(base_url=base_url or environ.get("COMFY_SERVICE_URL") or DEFAULT_URL,
                   api_key=api_key or environ.get("COMFY_SERVICE_API_KEY") or None)

    def http_options(self, transport: Any = None) -> dict[str, Any]:
        """Keyword arguments for httpx.Client / httpx.AsyncClient."""
        headers = {"User-Agent": f"comfy-service-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        options: dict[str, Any] = {"base_url": self.base_url, "headers": headers,
                                   "timeout": self.timeout, "follow_redirects": True}
        if transport is not None:
            options["transport"] = transport
        return options


def make_config(base_url: str | ClientConfig, api_key: str | None,
                timeout: float | httpx.Timeout | None, retry: RetryPolicy | None) -> ClientConfig:
    if isinstance(base_url, ClientConfig):
        return base_url
    defaults = ClientConfig()
    return ClientConfig(base_url, api_key,
                        timeout if isinstance(timeout, httpx.Timeout)
                        else defaults.timeout if timeout is None else httpx.Timeout(timeout),
                        retry or defaults.retry)
