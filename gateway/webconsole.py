"""The web console: a static page at `/` and its files under `/console/`, sent with a strict CSP.

The page holds no secret and needs no key: it asks for the API key itself, keeps it in the
tab's sessionStorage and sends it as a Bearer header from JavaScript (gateway/console/api.js),
never in a URL. Nothing here is rendered on the server and no script runs inline, so the
Content-Security-Policy can allow scripts, styles and connections to this origin alone.
"""

from __future__ import annotations

import pathlib
from collections.abc import MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

CONSOLE_DIR = pathlib.Path(__file__).parent / "console"
CSP = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
    # Outputs are fetched with the key and shown from blob: URLs.
    "img-src 'self' blob: data:", "media-src 'self' blob:",
    "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load (StaticFiles answers 304 by ETag): a new release is seen at once.
    "Cache-Control": "no-cache",
}


class SecurityHeaders:
    """ASGI middleware: the console's security headers on every answer of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode())
                                        for k, v in SECURITY_HEADERS.items())]
            await send(message)
        await self.app(scope, receive, send_with_headers)


async def index(request: Request) -> Response:
    return FileResponse(CONSOLE_DIR / "index.html", headers=SECURITY_HEADERS)


def routes() -> list[BaseRoute]:
    """GET / (documented in /openapi.json) and the page's files under /console/ (a Mount:
    unknown files are 404 route_not_found like any other path)."""
    return [Route("/", index, methods=["GET"]),
            Mount("/console", app=SecurityHeaders(StaticFiles(directory=CONSOLE_DIR)),
                  name="console")]
