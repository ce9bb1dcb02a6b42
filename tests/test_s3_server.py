"""The `s3_server` fixture is a working S3: what the S3 output store needs, proven with obstore."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import obstore
import pytest

from comfy_service.storage import SETTLE_S
from tests.support.s3 import S3Server

MIB = 1024 * 1024


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


async def chunks(count: int, size: int = MIB) -> AsyncIterator[bytes]:
    for i in range(count):
        yield bytes([i]) * size


def test_streamed_upload_is_multipart_and_reads_back_whole(s3_server: S3Server) -> None:
    store = s3_server.store()
    key = unique_prefix() + "big.bin"
    expected = hashlib.sha256(b"".join(bytes([i]) * MIB for i in range(12))).hexdigest()

    async def scenario() -> tuple[dict[str, object], int, str]:
        # Given 12 MiB arriving as an async stream, When it is put (5 MiB parts by default)
        await obstore.put_async(store, key, chunks(12))
        meta = await obstore.head_async(store, key)
        # And read back as a stream
        got = await obstore.get_async(store, key)
        digest, size = hashlib.sha256(), 0
        async for piece in got.stream(min_chunk_size=MIB):
            digest.update(piece)
            size += len(piece)
        await asyncio.sleep(SETTLE_S)  # obstore's last completions land before the loop closes
        return dict(meta), size, digest.hexdigest()

    meta, size, digest = asyncio.run(scenario())
    # Then the object is whole, and its ETag is a multipart one (md5-of-parts "-3")
    assert meta["size"] == 12 * MIB
    assert str(meta["e_tag"]).strip('"').endswith("-3")
    assert (size, digest) == (12 * MIB, expected)
    # And the posix backend holds it as a plain file under the bucket directory
    assert (s3_server.root / s3_server.bucket / key).stat().st_size == 12 * MIB


def test_list_by_prefix_then_bulk_delete(s3_server: S3Server) -> None:
    store = s3_server.store()
    mine, other = unique_prefix(), unique_prefix()
    # Given three objects under one prefix and one under another
    for name in ("a.png", "b.png", "sub/c.png"):
        obstore.put(store, mine + name, name.encode())
    obstore.put(store, other + "x.png", b"x")
    # When the prefix is listed
    listed = sorted(meta["path"] for batch in obstore.list(store, mine) for meta in batch)
    # Then exactly its objects come back
    assert listed == [mine + "a.png", mine + "b.png", mine + "sub/c.png"]
    # When they are deleted in one call (S3 DeleteObjects)
    obstore.delete(store, listed)
    # Then the prefix is empty and the other prefix untouched
    assert [meta for batch in obstore.list(store, mine) for meta in batch] == []
    assert obstore.get(store, other + "x.png").bytes().to_bytes() == b"x"


def test_presigned_get_serves_the_object_without_credentials(s3_server: S3Server) -> None:
    store = s3_server.store()
    key = unique_prefix() + "out.png"
    obstore.put(store, key, b"\x89PNG fake")
    # When a GET URL is signed and fetched by a client holding no keys
    url = obstore.sign(store, "GET", key, timedelta(minutes=5))
    answer = httpx.get(url, timeout=10)
    # Then the object is served
    assert answer.status_code == 200
    assert answer.content == b"\x89PNG fake"


def test_a_wrong_secret_is_refused(s3_server: S3Server) -> None:
    key = unique_prefix() + "secret.png"
    obstore.put(s3_server.store(), key, b"data")
    forged = s3_server.store(secret_key="not-" + s3_server.secret_key)
    # When a request is signed with the wrong secret
    answer = httpx.get(obstore.sign(forged, "GET", key, timedelta(minutes=5)), timeout=10)
    # Then the server refuses it, and obstore's own calls fail the same way
    assert answer.status_code == 403
    assert "SignatureDoesNotMatch" in answer.text
    with pytest.raises(obstore.exceptions.PermissionDeniedError):
        obstore.get(forged, key)


def test_env_names_the_server_as_service_settings(s3_server: S3Server) -> None:
    assert s3_server.env() == {
        "OUTPUT_STORE": "s3", "S3_BUCKET": s3_server.bucket, "S3_PREFIX": "",
        "S3_ENDPOINT": f"http://127.0.0.1:{s3_server.port}", "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


def test_stop_ends_the_server_on_sigterm(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Given a private server (not the shared one)
    server = S3Server(tmp_path_factory.mktemp("s3-stop"), bucket="scratch")
    # When it is stopped
    code = server.stop(timeout=10)
    # Then it exited cleanly on SIGTERM (not killed) and no longer answers
    assert code == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.endpoint + "/health", timeout=2)
