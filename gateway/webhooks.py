"""Webhooks at the gateway: a submitted URL checked against the address policy (422 naming
`webhook.url`), the task noted for the workers that deliver (actors/webhooks.py), and each API
key's signing secret for GET /api/v1/webhook-secret."""

from __future__ import annotations

import redis.asyncio as aioredis
from starlette.requests import Request

from actors import webhooks
from comfy_service.errors import ValidationFailed
from comfy_service.settings import Settings
from comfy_service.webhook_policy import Allowlist, WebhookSpec, derive_secret
from gateway.auth import bearer_key

SUBMIT_RESOLVE_S = 2.0  # a submit waits at most this for the webhook host's addresses


class WebhookDesk:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.allow = Allowlist.parse(settings.webhook_allow_hosts)

    async def check(self, spec: WebhookSpec) -> None:
        """422 unless every address the URL's host has now may be called (delivery checks
        again: DNS may change)."""
        reason, _ = await webhooks.vet(spec.url, self.allow, SUBMIT_RESOLVE_S)
        if reason is not None:
            raise ValidationFailed("the webhook URL may not be called",
                                   {"fields": [{"field": "webhook.url", "message": reason}]})

    def secret(self, request: Request) -> str:
        """The signing secret of the caller's key (an authorized request; "" without keys)."""
        key = bearer_key(request.headers.get("authorization", ""), self.settings.api_keys) \
            if self.settings.api_keys else None
        return derive_secret(self.settings.webhook_secret, key or "")

    async def note(self, task_id: str) -> None:
        await webhooks.note(self.redis, task_id)

    async def forget(self, task_id: str) -> None:
        """A noted task that was not stored after all (quota, idempotent replay)."""
        await webhooks.forget(self.redis, task_id)
