"""Per-key request rates and caps on tasks in flight, shared by every gateway process via Redis.

A token bucket per tenant (one Lua script: refill by Redis's clock, take a token or say how
long until one is there) bounds the request rate; the cap on tasks queued or running is
checked atomically with storing the task (TaskStore.create). Admin keys are exempt. Limits come
from configuration: defaults for every key, overrides per key (`API_KEY_LIMITS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from comfy_service import constants as c
from comfy_service.errors import QuotaExceeded, RateLimited


@dataclass(frozen=True)
class Limits:
    """0 means unlimited."""

    rate_per_s: float = 0.0
    burst: int = 0
    max_active: int = 0

    @property
    def bucket(self) -> int:
        return self.burst or max(1, math.ceil(self.rate_per_s))


UNLIMITED = Limits()


def parse_key_limits(text: str) -> dict[str, Limits]:
    """`key=rate/burst/active;key2=...` (pure); an empty field keeps the default (0)."""
    limits: dict[str, Limits] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        key, _, spec = entry.partition("=")
        fields = (spec.split("/") + ["", "", ""])[:3]
        if not key or not spec or len(spec.split("/")) > 3:
            raise ValueError("API_KEY_LIMITS entries look like <key>=<rate/s>/<burst>/<max active>")
        rate, burst, active = (field.strip() for field in fields)
        limits[key.strip()] = Limits(float(rate or 0), int(burst or 0), int(active or 0))
    return limits


def limits_for(key: str, defaults: Limits, per_key: Mapping[str, Limits],
               admin_keys: tuple[str, ...]) -> Limits:
    """The limits a key works under (pure)."""
    if key in admin_keys:
        return UNLIMITED
    return per_key.get(key, defaults)


# KEYS[1] bucket; ARGV rate per second, bucket size. Returns {1, 0} or {0, seconds to wait}.
_TAKE_TOKEN = """
local rate, size = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or size
local at = tonumber(state[2]) or now
tokens = math.min(size, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(size / rate) + 1)
if allowed == 1 then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""


class RateLimiter:
    """Takes a token from a tenant's bucket in Redis, or raises 429 rate_limited."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(_TAKE_TOKEN)

    async def check(self, tenant: str, limits: Limits) -> None:
        if limits.rate_per_s <= 0:
            return
        allowed, wait = await self._take(keys=[c.RATE_KEY.format(tenant=tenant)],
                                         args=[limits.rate_per_s, limits.bucket])
        if int(allowed) != 1:
            wait_s = float(wait)
            raise RateLimited(f"more than {limits.rate_per_s:g} requests/s for this API key; "
                              f"retry in {wait_s:.2f} s", wait_s,
                              {"rate_per_s": limits.rate_per_s, "burst": limits.bucket})


def over_quota(limits: Limits) -> QuotaExceeded:
    # Tasks end at their own pace: one typical task length is a fair first wait.
    return QuotaExceeded(f"this API key already has {limits.max_active} tasks queued or "
                         f"running; wait for some to finish", QUOTA_RETRY_S,
                         {"max_active": limits.max_active})


QUOTA_RETRY_S = 5.0
