"""comfy_service.client and the client commands of `comfy-service` against real processes: a
gateway, a worker, Redis and a simulated node (tests/support/service.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from comfy_service.client import (
    AsyncClient,
    Client,
    GenerateRequest,
    NotFound,
    Progress,
    RetryPolicy,
    TaskNotFound,
    TooManyRequests,
    ValidationError,
)
from tests.support.service import Stack, slow_body, txt2img_body

KEY = "client-key-0123456789"
FAST, SLOW = "fast-key-0123456789", "slow-key-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("client"), nodes=1, step_ms=50,
                  env={"API_KEYS": KEY, "SSE_KEEPALIVE_S": "0.5"})
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One request a second for SLOW; FAST is unlimited; one event stream per key."""
    stack = Stack(tmp_path_factory.mktemp("client-limited"), nodes=1, step_ms=50,
                  env={"API_KEYS": f"{FAST},{SLOW}", "ADMIN_API_KEYS": FAST,
                       "RATE_LIMIT_PER_S": "1", "RATE_LIMIT_BURST": "1",
                       "SSE_MAX_STREAMS_PER_KEY": "1"})
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, KEY, timeout=30) as client:
        yield client


class Recording(httpx.BaseTransport):
    """The real transport, noting each request and its status; the first `drops` event streams
    break (as a dropped connection does) after `after` chunks."""

    def __init__(self, drops: int = 0, after: int = 3) -> None:
        self.inner = httpx.HTTPTransport()
        self.drops, self.after = drops, after
        self.seen: list[tuple[httpx.Request, httpx.Response]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.seen.append((request, response))
        if request.url.path.endswith("/events") and response.status_code == 200 and self.drops:
            self.drops -= 1
            assert isinstance(response.stream, httpx.SyncByteStream)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=Breaking(response.stream, self.after),
                                  extensions=response.extensions)
        return response

    def close(self) -> None:
        self.inner.close()

    def statuses(self, path_end: str = "") -> list[int]:
        return [r.status_code for q, r in self.seen if q.url.path.endswith(path_end)]


class Breaking(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, after: int) -> None:
        self.inner, self.after = inner, after

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.inner):
            if index == self.after:
                raise httpx.RemoteProtocolError("peer closed connection (dropped by the test)")
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _params(steps: int = 3, **more: object) -> dict[str, object]:
    return {**txt2img_body(steps=steps)["params"], **more}


def _fractions(seen: list[Progress]) -> list[float]:
    return [p.fraction for p in seen if p.fraction is not None]


def test_generate_and_wait_follow_the_task_to_its_outputs_with_progress(client: Client) -> None:
    seen: list[Progress] = []
    task = client.generate("txt2img", _params(steps=20))
    assert task.status == "queued" and task.task_id
    done = client.wait(task.task_id, timeout=60, on_progress=seen.append)
    assert done.succeeded and done.outputs and done.outputs[0].sha256
    fractions = _fractions(seen)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(0 < f < 1 for f in fractions), seen
    assert seen[-1].status == "succeeded" and {"running", "succeeded"} <= {p.status for p in seen}


def test_wait_resumes_after_a_dropped_stream_with_last_event_id(stack: Stack) -> None:
    # Given an event stream that breaks mid-task
    transport = Recording(drops=2, after=3)
    with Client(stack.url, KEY, transport=transport) as client:
        task = client.generate("txt2img", slow_body(40)["params"])
        seen: list[Progress] = []
        # When the client waits
        done = client.wait(task.task_id, timeout=60, on_progress=seen.append)
    # Then it reconnected after the last event it saw, and saw the task to its end
    streams = [q for q, _ in transport.seen if q.url.path.endswith("/events")]
    assert len(streams) == 3 and "last-event-id" not in streams[0].headers
    assert all(q.headers["last-event-id"] for q in streams[1:])
    assert done.succeeded and _fractions(seen) == sorted(_fractions(seen))
    assert seen[-1].status == "succeeded"


def test_wait_falls_back_to_polling_when_no_stream_is_allowed(limited: Stack) -> None:
    # Given the key's only event stream held open elsewhere
    blocker = limited.submit(slow_body(60))
    with httpx.Client(base_url=limited.url, timeout=30) as other, other.stream(
            "GET", f"/api/v1/tasks/{blocker}/events",
            headers={"Authorization": f"Bearer {FAST}"}) as held:
        assert held.status_code == 200
        transport = Recording()
        with Client(limited.url, FAST, transport=transport) as client:
            task = client.generate("txt2img", _params())
            seen: list[Progress] = []
            done = client.wait(task.task_id, timeout=60, on_progress=seen.append)
    # Then the stream was refused and polling saw the task end
    assert transport.statuses("/events") == [429]
    assert transport.statuses(f"/tasks/{task.task_id}")
    assert done.succeeded and seen[-1].status == "succeeded"
    limited.http.delete(f"/api/v1/tasks/{blocker}")


def test_download_writes_each_output_with_its_recorded_sha256(client: Client,
                                                              tmp_path: pathlib.Path) -> None:
    done = client.wait(client.generate("txt2img", _params()).task_id, timeout=60)
    paths = client.download(done, tmp_path / "out")
    assert len(paths) == len(done.outputs) >= 1
    for path, output in zip(paths, done.outputs, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == output.sha256
        assert path.parent == tmp_path / "out" and path.stat().st_size == output.bytes
    assert not list((tmp_path / "out").glob("*.part"))


def test_errors_carry_the_stable_code(client: Client) -> None:
    with pytest.raises(TaskNotFound) as missing:
        client.get("no-such-task")
    assert (missing.value.status, missing.value.code) == (404, "task_not_found")
    with pytest.raises(ValidationError) as invalid:
        client.generate("txt2img", _params(steps=-1))
    assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    assert "steps" in str(invalid.value.details)
    with pytest.raises(NotFound) as unknown:
        client.generate("no-such-workflow", {})
    assert unknown.value.code == "workflow_not_found"


def test_cancel_ends_a_waiting_task(client: Client) -> None:
    task = client.generate("txt2img", slow_body(60)["params"])
    client.cancel(task.task_id)
    assert client.wait(task.task_id, timeout=60).status == "cancelled"


def test_uploads_nodes_and_workflows(client: Client) -> None:
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "PNG")
    upload = client.upload(image.getvalue())
    assert upload.ref == f"upload:{upload.upload_id}" and upload.content_type == "image/png"
    assert upload.sha256 == hashlib.sha256(image.getvalue()).hexdigest()
    assert [n.healthy for n in client.nodes()] == [True]
    assert "txt2img" in {w.name for w in client.workflows()}


def test_batches_are_submitted_followed_and_cancelled(client: Client) -> None:
    # Given two copies of one request, seeds counting up
    batch = client.create_batch(GenerateRequest("txt2img", _params(seed=7)), count=2,
                                vary_seed=True)
    assert len(batch.task_ids) == 2
    done = [client.wait(task_id, timeout=60) for task_id in batch.task_ids]
    assert [task.params["seed"] for task in done] == [7, 8]
    summary = client.get_batch(batch.batch_id)
    assert summary.counts["succeeded"] == 2 and all(t.outputs for t in summary.tasks)
    # A batch of slow ones is cancelled as one
    slow = client.create_batch([GenerateRequest("txt2img", slow_body(60)["params"])] * 2)
    client.cancel_batch(slow.batch_id)
    assert {client.wait(t, timeout=60).status for t in slow.task_ids} == {"cancelled"}
    with pytest.raises(NotFound) as missing:
        client.get_batch("no-such-batch")
    assert missing.value.code == "batch_not_found"


def test_429_is_retried_after_retry_after(limited: Stack) -> None:
    transport = Recording()
    with Client(limited.url, SLOW, transport=transport) as client:
        started = time.monotonic()
        for _ in range(3):
            client.nodes()
        elapsed = time.monotonic() - started
    waits = [float(r.headers["retry-after"]) for _, r in transport.seen if r.status_code == 429]
    assert waits and transport.statuses()[-1] == 200
    assert elapsed >= sum(waits)
    # Without retries the 429 reaches the caller, with its code and Retry-After
    with Client(limited.url, SLOW, retry=RetryPolicy(attempts=1)) as client, \
            pytest.raises(TooManyRequests) as refused:
        for _ in range(3):
            client.nodes()
    assert refused.value.code == "rate_limited" and (refused.value.retry_after_s or 0) >= 1


def test_the_async_client_generates_waits_and_downloads(stack: Stack,
                                                        tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(stack.url, KEY) as client:
            seen: list[Progress] = []
            task = await client.generate("txt2img", _params(steps=20))
            done = await client.wait(task.task_id, timeout=60, on_progress=seen.append)
            assert done.succeeded and _fractions(seen) == sorted(_fractions(seen))
            assert seen[-1].fraction == 1.0
            paths = await client.download(done, tmp_path)
            assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == \
                [o.sha256 for o in done.outputs]
            with pytest.raises(TaskNotFound):
                await client.get("no-such-task")
    asyncio.run(scenario())


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMFY_SERVICE_URL": stack.url, "COMFY_SERVICE_API_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "comfy_service.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_generates_with_progress_and_saves_the_outputs(stack: Stack,
                                                               tmp_path: pathlib.Path) -> None:
    out = tmp_path / "images"
    result = _cli(stack, "generate", "a lighthouse at dawn", "--steps", "10",
                  "--param", "width=256", "--param", "height=256", "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = [pathlib.Path(line) for line in result.stdout.splitlines()]
    assert saved and sorted(saved) == sorted(out.iterdir())
    assert "100% succeeded" in result.stderr and "running" in result.stderr
    assert KEY not in result.stdout + result.stderr


def test_the_cli_exits_non_zero_with_the_error_code(stack: Stack, tmp_path: pathlib.Path) -> None:
    result = _cli(stack, "generate", "x", "--steps", "-1", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "validation_error" in result.stderr and not list(tmp_path.iterdir())
    missing = _cli(stack, "tasks", "get", "no-such-task")
    assert missing.returncode == 1 and "task_not_found" in missing.stderr


def test_the_cli_gets_and_cancels_tasks_and_lists_nodes(stack: Stack) -> None:
    task_id = stack.submit(slow_body(60))
    got = _cli(stack, "tasks", "get", task_id)
    assert got.returncode == 0 and f'"task_id": "{task_id}"' in got.stdout
    cancelled = _cli(stack, "tasks", "cancel", task_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert stack.wait_task(task_id)["status"] == "cancelled"
    nodes = _cli(stack, "nodes")
    assert nodes.returncode == 0 and "healthy" in nodes.stdout
