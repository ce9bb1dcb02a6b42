"""Client: the blocking client. It performs the effects of the operations (protocol.py)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx
from httpx_sse import EventSource

from comfy_service.client import operations as ops
from comfy_service.client.config import DEFAULT_URL, ClientConfig, make_config
from comfy_service.client.models import Batch, GenerateRequest, Node, Task, Upload, Workflow
from comfy_service.client.protocol import (
    Close,
    Effect,
    Operation,
    ReadEvent,
    RetryPolicy,
    Runner,
    Send,
    Sleep,
)
from comfy_service.client.waiting import OnProgress, WaitOptions, wait

T = TypeVar("T")


class Client:
    """comfy-service API v1, blocking: `Client(url, api_key)` or `Client(ClientConfig(...))`."""

    def __init__(self, base_url: str | ClientConfig = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = None, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = make_config(base_url, api_key, timeout, retry)
        self._http = httpx.Client(**self.config.http_options(transport))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the API ---------------------------------------------------------------------------
    def generate(self, workflow: str | dict[str, Any] = "txt2img",
                 params: dict[str, Any] | None = None, *, priority: int | None = None,
                 timeout_s: float | None = None, idempotency_key: str | None = None) -> Task:
        """Submit a task: a template by name with its params, or an API-format graph (dict)."""
        call = ops.generate_call(GenerateRequest(workflow, params or {}, priority, timeout_s),
                                 idempotency_key)
        return self._run(ops.generate(call, self.config.retry))

    def get(self, task_id: str) -> Task:
        return self._run(ops.get_task(task_id, self.config.retry))

    def wait(self, task_id: str, timeout: float | None = None,
             on_progress: OnProgress | None = None, *,
             options: WaitOptions | None = None) -> Task:
        """Follow the task's events until it ends; WaitTimeout after `timeout` seconds."""
        return self._run(wait(task_id, timeout, options, on_progress, self.config.retry))

    def cancel(self, task_id: str) -> Task:
        return self._run(ops.cancel(task_id, self.config.retry))

    def download(self, task: Task | str, directory: str | pathlib.Path) -> list[pathlib.Path]:
        """Save the task's outputs in `directory`; each file's sha256 is checked."""
        found = task if isinstance(task, Task) else self.get(task)
        return self._run(ops.download(found, pathlib.Path(directory), self.config.retry))

    def upload(self, source: bytes | str | pathlib.Path, content_type: str | None = None
               ) -> Upload:
        """An input image; name it in params by the returned `.ref` ("upload:<id>")."""
        return self._run(ops.upload(source, content_type, self.config.retry))

    def create_batch(self, requests: GenerateRequest | Sequence[GenerateRequest], *,
                     count: int | None = None, vary_seed: bool = False) -> Batch:
        """Submit many tasks as one: a list of requests, or `count` copies of one."""
        call = ops.batch_call(requests, count, vary_seed)
        return self._run(ops.batch(call, self.config.retry))

    def get_batch(self, batch_id: str) -> Batch:
        return self._run(ops.get_batch(batch_id, self.config.retry))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._run(ops.get_batch(batch_id, self.config.retry, "DELETE"))

    def nodes(self) -> list[Node]:
        return self._run(ops.nodes(self.config.retry))

    def workflows(self) -> list[Workflow]:
        return self._run(ops.workflows(self.config.retry))

    # --- effects ---------------------------------------------------------------------------
    def _run(self, operation: Operation[T]) -> T:
        runner = Runner(operation)
        try:
            while (effect := runner.next()) is not None:
                try:
                    runner.reply = self._perform(effect, runner)
                except httpx.HTTPError as exc:
                    runner.error = exc
            return cast(T, runner.value)
        finally:
            operation.close()
            self._release(runner)

    def _perform(self, effect: Effect, runner: Runner[Any]) -> Any:
        if isinstance(effect, Send):
            request = effect.call.build(self._http)
            if not effect.stream:
                return self._http.send(request)
            self._release(runner)
            response = self._http.send(request, stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
            return runner.opened(response)
        if isinstance(effect, Sleep):
            return time.sleep(effect.seconds)
        if isinstance(effect, Close):
            return self._release(runner)
        assert runner.response is not None, f"{effect} without an open stream"
        if runner.items is None:
            runner.items = EventSource(runner.response).iter_sse() \
                if isinstance(effect, ReadEvent) else runner.response.iter_bytes()
        return next(runner.items, None)

    def _release(self, runner: Runner[Any]) -> None:
        if (response := runner.release()) is not None:
            response.close()
