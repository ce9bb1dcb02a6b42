"""Where outputs and inputs live: one object store, a local directory or an S3-compatible bucket.

Both backends go through obstore (Rust's object_store), so there is one code path: writes are
streamed (multipart to S3, a staging file renamed into place locally: a reader never sees half
an object), reads are streamed, and a retried write of the same key replaces the object.
Keys are the service's own (comfy_service.outputs): `outputs/<task>/<index><ext>`,
`inputs/<upload>`. Every call is bounded: S3 requests by the client's timeouts and a short
retry budget, whole transfers by the callers' asyncio timeouts.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import obstore
import redis.asyncio as aioredis
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError
from obstore.store import LocalStore, S3Store
from redis.exceptions import RedisError

from comfy_service import constants as c
from comfy_service.settings import Settings

STREAM_CHUNK_BYTES = 1024 * 1024
# S3 multipart: parts of the minimum size, two in flight. A write holds at most about
# PUT_CHUNK_BYTES x (PUT_CONCURRENCY + 1) in memory, whatever the file's size.
PUT_CHUNK_BYTES = 5 * 1024 * 1024
PUT_CONCURRENCY = 2
DELETE_BATCH = 1000                # S3 DeleteObjects takes at most 1,000 keys
MARKER_KEY = ".comfy-service-store"
# obstore completes a Python awaitable from its own Rust threads; one that lands after the
# asyncio loop has closed aborts the process (seen at exit after streamed reads: 1 exit in 3
# with SIGABRT, none with this grace). A process lets them land before its loop closes.
SETTLE_S = 0.2


class StoreFailure(RuntimeError):
    """The store refused a request or could not be reached (after the client's retries)."""


class StoreMismatch(RuntimeError):
    """This process's local OUTPUT_DIR is not the directory the other processes use."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    chunks: AsyncIterator[bytes]


class BlobStore:
    """The service's object store: put, get, presign, delete by prefix."""

    def __init__(self, store: Any, kind: str, where: str, presign_ttl_s: int = 0) -> None:
        self._store = store
        self.kind = kind                # "local" or "s3"
        self.where = where              # a directory or s3://bucket/prefix (no secrets)
        self.presign_ttl_s = presign_ttl_s if kind == "s3" else 0

    async def aclose(self) -> None:
        """Let the store's last completions reach this loop before it closes (see SETTLE_S)."""
        await asyncio.sleep(SETTLE_S)

    async def put(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> None:
        """Write `key` from a stream; an exception raised by the stream aborts the write and
        leaves no object (nor a half one) behind."""
        attributes = {"Content-Type": content_type} if self.kind == "s3" else None
        try:
            await obstore.put_async(self._store, key, chunks, chunk_size=PUT_CHUNK_BYTES,
                                    max_concurrency=PUT_CONCURRENCY, attributes=attributes)
        except BaseError as exc:  # the stream's own exceptions pass through unchanged
            raise StoreFailure(f"writing {key} to {self.where}: {_first_line(exc)}") from exc

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self.put(key, _once(data), content_type)

    async def get(self, key: str) -> StoredObject | None:
        try:
            result = await obstore.get_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as exc:
            raise StoreFailure(f"reading {key} from {self.where}: {_first_line(exc)}") from exc
        return StoredObject(int(result.meta["size"]),
                            aiter(result.stream(min_chunk_size=STREAM_CHUNK_BYTES)))

    async def read(self, key: str, max_bytes: int) -> bytes | None:
        """A small object whole (inputs): None when absent; at most `max_bytes`."""
        found = await self.get(key)
        if found is None:
            return None
        if found.size > max_bytes:
            raise ValueError(f"{key} is {found.size} bytes, over the {max_bytes} allowed")
        return b"".join([bytes(chunk) async for chunk in found.chunks])

    async def presigned_url(self, key: str) -> str | None:
        """A short-lived GET URL straight to the bucket, when configured (S3 only)."""
        if not self.presign_ttl_s:
            return None
        url: str = await obstore.sign_async(self._store, "GET", key,
                                            datetime.timedelta(seconds=self.presign_ttl_s))
        return url

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a `<kind>/<id>/` folder); returns how many."""
        deleted = 0
        async for batch in obstore.list(self._store, prefix=prefix, chunk_size=DELETE_BATCH):
            paths = [meta["path"] for meta in batch]
            if paths:
                await obstore.delete_async(self._store, paths)
                deleted += len(paths)
        if self.kind == "local":  # the folder, with any staging file a killed write left
            await asyncio.to_thread(shutil.rmtree, os.path.join(self.where, prefix), True)
        return deleted

    async def wait_shared(self, redis: aioredis.Redis, retry_s: float = 1.0) -> None:
        """check_shared, retried while Redis cannot be reached (a process may start before
        Redis does); StoreMismatch is raised as soon as the check can be made."""
        while True:
            try:
                await self.check_shared(redis)
                return
            except (RedisError, OSError):
                await asyncio.sleep(retry_s)

    async def check_shared(self, redis: aioredis.Redis) -> None:
        """Local backend: prove that this process and the others use one directory.

        The first process to start writes a random id into the directory and into Redis; every
        other compares the two. On two machines each with its own OUTPUT_DIR, the ids differ
        and the process refuses to start instead of serving 404s for outputs it cannot see."""
        if self.kind != "local":
            return
        marker = await self.read(MARKER_KEY, 1024)
        if marker is None:
            # Create-if-absent: a gateway and a worker starting at once on one directory must
            # end up with one id (a plain write let the second overwrite the first's after the
            # first had put its own in Redis, and the second then never matched).
            try:
                await obstore.put_async(self._store, MARKER_KEY, secrets.token_hex(16).encode(),
                                        mode="create")
            except AlreadyExistsError:
                pass  # another process on this directory was first: use its id
            except BaseError as exc:
                raise StoreFailure(f"writing {MARKER_KEY} to {self.where}: "
                                   f"{_first_line(exc)}") from exc
            marker = await self.read(MARKER_KEY, 1024)
            if marker is None:
                raise StoreFailure(f"{MARKER_KEY} vanished from {self.where} as it was made")
        await redis.set(c.STORE_ID_KEY, marker, nx=True)
        expected = await redis.get(c.STORE_ID_KEY)
        if expected != marker:
            raise StoreMismatch(
                f"OUTPUT_DIR {self.where} is not the directory the other comfy-service "
                f"processes of this Redis use: with OUTPUT_STORE=local the gateway and every "
                f"worker need one shared directory (one machine, or a shared volume). Across "
                f"machines set OUTPUT_STORE=s3 (docs/deploy.md). If the directory was moved on "
                f"purpose, delete the Redis key {c.STORE_ID_KEY}.")


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry a multi-line debug dump: the first line says what failed."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def open_store(settings: Settings) -> BlobStore:
    """The store the settings name (OUTPUT_STORE=local|s3)."""
    if settings.output_store == "s3":
        config: dict[str, Any] = {"region": settings.s3_region}
        if settings.s3_endpoint:
            config["endpoint"] = settings.s3_endpoint
            config["virtual_hosted_style_request"] = False  # path style: MinIO-like servers
        if settings.s3_access_key:
            config["access_key_id"] = settings.s3_access_key
            config["secret_access_key"] = settings.s3_secret_key
        store = S3Store(
            settings.s3_bucket, prefix=settings.s3_prefix or None, **config,
            client_options={"timeout": f"{int(settings.store_timeout_s)}s",
                            "connect_timeout": "5s",
                            "allow_http": settings.s3_endpoint.startswith("http://")},
            retry_config={"max_retries": 3,
                          "retry_timeout": datetime.timedelta(seconds=settings.store_timeout_s),
                          "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                                      "max_backoff": datetime.timedelta(seconds=2),
                                      "base": 2.0}})
        where = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        return BlobStore(store, "s3", where, settings.presign_ttl_s)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    return BlobStore(LocalStore(settings.output_dir, mkdir=True), "local",
                     str(settings.output_dir))
