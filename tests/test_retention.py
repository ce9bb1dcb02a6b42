"""Retention against a real Redis and real stores: expired owners lose their objects, live
ones keep theirs, and several sweepers never delete the same owner twice."""

from __future__ import annotations

import asyncio
import pathlib

import obstore
import pytest
import redis.asyncio as aioredis

from actors.retention import Retention
from comfy_service import constants as c
from comfy_service.settings import Settings
from comfy_service.storage import BlobStore, StoreMismatch, open_store
from tests.support.processes import RedisProcess
from tests.support.s3 import S3Server


def local_store(tmp_path: pathlib.Path) -> BlobStore:
    return open_store(Settings.from_env({"OUTPUT_DIR": str(tmp_path / "out")}))


def s3_store(s3_server: S3Server, prefix: str) -> BlobStore:
    return open_store(Settings.from_env({**s3_server.env(), "S3_PREFIX": prefix}))


async def keys(store: BlobStore) -> list[str]:
    found = await obstore.list(store._store).collect_async()
    return sorted(m["path"] for m in found if not m["path"].startswith("."))


async def scenario(redis_url: str, store: BlobStore, owners: int) -> tuple[list[str], int]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        sweepers = [Retention(redis, store, ttl_s=60) for _ in range(3)]
        # Given tasks with two objects each: the even ones' records have expired, the odd
        # ones' still live
        for n in range(owners):
            for index in range(2):
                await store.put_bytes(f"outputs/t{n}/{index}.png", b"x" * 10, "image/png")
            await sweepers[0].note("task", f"t{n}", ttl_s=0)
            if n % 2:
                await redis.set(c.TASK_KEY.format(task_id=f"t{n}"), "{}", ex=600)
        # When three sweepers run at once, in batches smaller than the backlog
        results = await asyncio.gather(*(s.sweep(batch=7) for s in sweepers for _ in range(3)))
        deleted = sum(r.owners_deleted for r in results)
        return await keys(store), deleted
    finally:
        await store.aclose()
        await redis.aclose()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_expired_owners_lose_their_objects_once_and_live_ones_keep_them(
        backend: str, tmp_path: pathlib.Path, redis_server: RedisProcess,
        request: pytest.FixtureRequest) -> None:
    if backend == "local":
        store = local_store(tmp_path)
    else:
        store = s3_store(request.getfixturevalue("s3_server"), f"ret-{tmp_path.name}")
    left, deleted = asyncio.run(scenario(redis_server.url, store, owners=20))
    # Then each expired owner was deleted by exactly one sweeper, and only those
    assert deleted == 10
    assert left == sorted(f"outputs/t{n}/{i}.png" for n in range(1, 20, 2) for i in range(2))


def test_a_local_store_in_another_directory_is_refused(tmp_path: pathlib.Path,
                                                        redis_server: RedisProcess) -> None:
    async def check(directory: str) -> None:
        store = open_store(Settings.from_env({"OUTPUT_DIR": directory}))
        redis = aioredis.Redis.from_url(redis_server.url)
        try:
            await store.check_shared(redis)
        finally:
            await store.aclose()
            await redis.aclose()
    # Given a first process with its directory, When another starts with the same one or
    # with another, Then only the other is refused, saying what to do
    asyncio.run(check(str(tmp_path / "shared")))
    asyncio.run(check(str(tmp_path / "shared")))  # the same directory again: fine
    with pytest.raises(StoreMismatch, match="OUTPUT_STORE=s3"):
        asyncio.run(check(str(tmp_path / "elsewhere")))


def test_processes_starting_at_once_on_one_new_directory_agree_on_its_id(
        tmp_path: pathlib.Path, redis_server: RedisProcess) -> None:
    async def start(directory: str, processes: int, fresh_redis: bool) -> None:
        redis = aioredis.Redis.from_url(redis_server.url)
        if fresh_redis:
            await redis.delete(c.STORE_ID_KEY)  # a Redis no process has used yet
        stores = [open_store(Settings.from_env({"OUTPUT_DIR": directory}))
                  for _ in range(processes)]
        try:
            await asyncio.gather(*(store.check_shared(redis) for store in stores))
        finally:
            for store in stores:
                await store.aclose()
            await redis.aclose()
    # Given a new directory and a fresh Redis, When a gateway and workers start at the same
    # moment (as `nomad job run` starts them), Then none is refused, nor is one restarting
    for attempt in range(10):
        directory = str(tmp_path / f"new{attempt}")
        asyncio.run(start(directory, 4, fresh_redis=True))
        asyncio.run(start(directory, 1, fresh_redis=False))
