"""Uploaded input files: their records in Redis (owner, type, size), kept UPLOAD_TTL after use.

The bytes live in the object store under `inputs/<id>/`; the record says who may use them and
how to name them on a node. Retention deletes the bytes once the record has expired.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from comfy_service import constants as c


@dataclass(frozen=True)
class UploadRecord:
    upload_id: str
    owner: str | None
    content_type: str
    ext: str
    bytes: int
    sha256: str
    created_at: str

    def public(self) -> dict[str, object]:
        return {"upload_id": self.upload_id, "ref": f"upload:{self.upload_id}",
                "content_type": self.content_type, "bytes": self.bytes, "sha256": self.sha256,
                "created_at": self.created_at}


def input_prefix(upload_id: str) -> str:
    return f"inputs/{upload_id}/"


def input_key(upload_id: str, ext: str) -> str:
    return f"{input_prefix(upload_id)}file{ext}"


class UploadStore:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    @staticmethod
    def key(upload_id: str) -> str:
        return c.UPLOAD_KEY.format(upload_id=upload_id)

    async def save(self, record: UploadRecord) -> None:
        await self.redis.set(self.key(record.upload_id), json.dumps(asdict(record)),
                             ex=self.ttl_s)

    async def get(self, upload_id: str) -> UploadRecord | None:
        raw = await self.redis.get(self.key(upload_id))
        return UploadRecord(**json.loads(raw)) if raw else None

    async def keep(self, upload_ids: list[str]) -> None:
        """A task uses these uploads: keep each at least UPLOAD_TTL from now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for upload_id in upload_ids:
                pipe.expire(self.key(upload_id), self.ttl_s, gt=True)
            await pipe.execute()
