"""Limits on what a node can do to a worker: outages are logged, frames and downloads are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from actors.comfy_client import ComfyClient
from actors.node_link import LOST, WS_MAX_FRAME_BYTES, NodeLink
from comfy_service.errors import NodeLost, OutputTooLarge
from comfy_service.settings import Settings
from comfy_service.storage import open_store
from tests.support.processes import free_port, wait_until
from tests.support.service import Stack, txt2img_body

IMAGE = {"filename": "big_00001_.png", "subfolder": "", "type": "output"}


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node_events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "actors.node_link" and getattr(r, "event", None) == name]


# --- 1. a node that is down from the start is logged, and again while it stays down -----------

def test_a_node_down_from_the_start_is_logged_at_once_and_again_after_the_period(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="actors.node_link")
    period = 0.6

    async def scenario() -> None:
        # Given a node whose port nothing listens on
        link = NodeLink("n-dead", f"http://127.0.0.1:{free_port()}", "cid", down_report_s=period)
        # When the worker links to it
        link.start()
        try:
            # Then its first failure is logged at once, with the node and the reason
            (down, *_) = await until(lambda: node_events(caplog, "node.down"), 30, "node.down")
            assert down.levelno == logging.WARNING
            fields = down.fields
            assert fields["node"] == "n-dead"
            assert "Error" in fields["reason"] and ":" in fields["reason"]  # type: message
            # And while it stays down it is logged again, once per period, never more often
            (again, *_) = await until(lambda: node_events(caplog, "node.still_down"), 30,
                                      "node.still_down")
            assert again.created - down.created >= period - 0.05
            still = again.fields
            assert still["node"] == "n-dead" and still["failures"] >= 2
            assert "Error" in still["reason"] and still["down_for_s"] >= period - 0.05
            assert len(node_events(caplog, "node.down")) == 1
            assert not link.healthy
        finally:
            await link.stop()

    asyncio.run(scenario())


# --- 2a. a WebSocket frame beyond the limit drops the link (node trouble), which reconnects ----

def test_a_websocket_frame_beyond_the_limit_drops_the_link_and_it_reconnects(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="actors.node_link")
    assert 8 * 1024 * 1024 <= WS_MAX_FRAME_BYTES <= 64 * 1024 * 1024  # previews fit, bounded

    async def scenario() -> None:
        connections: list[ServerConnection] = []
        send_big = asyncio.Event()

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            if request.path.startswith("/object_info"):
                return conn.respond(HTTPStatus.OK, "{}")
            return None

        async def handler(conn: ServerConnection) -> None:
            connections.append(conn)
            if len(connections) == 1:
                await send_big.wait()
                with contextlib.suppress(ConnectionClosed):  # the client closes mid-frame
                    await conn.send(b"\0" * (WS_MAX_FRAME_BYTES + 1))
            await conn.wait_closed()

        # Given a node whose socket is up and a task following a prompt on it
        async with serve(handler, "127.0.0.1", 0, process_request=process_request,
                         max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            link = NodeLink("n-big", f"http://127.0.0.1:{port}", "cid")
            follower = link.follow("p1")
            link.start()
            try:
                assert await link.wait_up(5)
                # When the node sends a frame one byte over the limit
                send_big.set()
                # Then the follower is told the node was lost and the link went down with a reason
                message = await asyncio.wait_for(follower.get(), 10)
                assert message is LOST
                (down, *_) = await until(lambda: node_events(caplog, "node.down"), 5,
                                         "node.down")
                assert "1009" in down.fields["reason"]
                # And the link is not crashed: it reconnects and the node is healthy again
                await until(lambda: len(connections) >= 2 and link.healthy, 10, "reconnect")
                assert link._task is not None and not link._task.done()
            finally:
                await link.stop()

    asyncio.run(scenario())


# --- 2b. downloads are bounded in size and time, and never leave a partial file ---------------

def client_for(handler: Callable[[httpx.Request], Any]) -> ComfyClient:
    return ComfyClient("http://node.test", transport=httpx.MockTransport(handler))


async def chunks(size: int, chunk: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = min(chunk, size - sent)
        sent += piece
        yield b"x" * piece


def download(client: ComfyClient, root: pathlib.Path, max_bytes: int,
             timeout_s: float = 5.0) -> Any:
    """Copy IMAGE from the node into a local store under `root`, as a worker does."""
    store = open_store(Settings.from_env({"OUTPUT_DIR": str(root)}))

    async def go() -> Any:
        try:
            return await client.copy_output(IMAGE, store, "outputs/task/0.png", "image/png",
                                            max_bytes, timeout_s)
        finally:
            await client.close()
            await store.aclose()
    return asyncio.run(go())


def stored(root: pathlib.Path) -> list[str]:
    """Every file under the store's root but its staging area, as relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_download_within_the_limit_is_stored_with_its_size_and_digest(
        tmp_path: pathlib.Path) -> None:
    body = bytes(range(256)) * 40
    client = client_for(lambda request: httpx.Response(200, content=body))
    saved = download(client, tmp_path, max_bytes=len(body))
    assert (tmp_path / "outputs" / "task" / "0.png").read_bytes() == body
    assert (saved.size, saved.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert stored(tmp_path) == ["outputs/task/0.png"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_download_over_the_limit_fails_with_output_too_large_and_leaves_no_file(
        tmp_path: pathlib.Path, declared: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=b"x" * 10_001)
        return httpx.Response(200, content=chunks(10_001))  # no Content-Length: counted
    with pytest.raises(OutputTooLarge) as caught:
        download(client_for(handler), tmp_path, max_bytes=10_000)
    assert caught.value.code == "output_too_large"
    assert caught.value.details["max_bytes"] == 10_000
    assert stored(tmp_path) == []


def test_a_download_that_stalls_past_its_timeout_is_node_trouble_and_leaves_no_file(
        tmp_path: pathlib.Path) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await asyncio.Event().wait()  # the node never sends the rest
        yield b""
    with pytest.raises(NodeLost, match="took over"):
        download(client_for(lambda request: httpx.Response(200, content=stalled())), tmp_path,
                 max_bytes=10_000, timeout_s=0.3)
    # The store drops its staging file as the cancelled write unwinds, a moment later
    wait_until(lambda: stored(tmp_path) == [], 10, "the staging file to be removed")


# --- 2c. end to end: an output over MAX_OUTPUT_BYTES fails the task, not retried --------------

@pytest.fixture(scope="module")
def small_outputs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The simulator's 256x256 PNG is about 5 kB, its 2048x2048 one about 30 kB.
    service = Stack(tmp_path_factory.mktemp("limits"), nodes=1, step_ms=5,
                    env={"MAX_OUTPUT_BYTES": "16000"})
    yield service
    service.stop()


def test_an_output_over_max_output_bytes_fails_the_task_with_output_too_large(
        small_outputs_stack: Stack) -> None:
    stack = small_outputs_stack
    # Given a worker whose MAX_OUTPUT_BYTES is 16000 and a task within it
    small = stack.wait_task(stack.submit(txt2img_body(steps=1, width=256, height=256)))
    assert small["status"] == "succeeded", small
    assert small["outputs"][0]["bytes"] <= 16000
    # When a task's output is bigger than that
    big_id = stack.submit(txt2img_body(steps=1, width=2048, height=2048))
    big = stack.wait_task(big_id)
    # Then it fails with output_too_large at its first attempt (not retried on another node)
    assert big["status"] == "failed", big
    assert big["error"]["code"] == "output_too_large", big["error"]
    assert big["error"]["details"]["max_bytes"] == 16000
    assert big["attempts"] == 1 and big["outputs"] in (None, [])
    # And nothing of it is left in the store, not even a partial file
    task_dir = stack.root / "outputs" / "outputs" / big_id
    assert not task_dir.exists() or list(task_dir.rglob("*")) == []
    assert stack.http.get(f"/api/v1/tasks/{big_id}/outputs/0").status_code == 404
