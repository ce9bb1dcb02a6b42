"""Node clients share one TLS context that verifies as httpx's default does."""

from __future__ import annotations

import ssl

from actors.comfy_client import ComfyClient
from comfy_service.tls import shared_context


def test_node_clients_share_one_context_that_verifies_certificates() -> None:
    context = shared_context()
    assert context is shared_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded

    first, second = ComfyClient("https://a.example"), ComfyClient("https://b.example")
    contexts = {id(client._http._transport._pool._ssl_context)  # type: ignore[attr-defined]
                for client in (first, second)}
    assert contexts == {id(context)}
