"""wait(): follow a task's Server-Sent Events to its end, resuming with Last-Event-ID after a
dropped connection, and polling GET /tasks/{id} when the stream is unavailable (no events route,
too many streams open, a proxy that does not stream). Pure: an Operation (protocol.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from httpx_sse import ServerSentEvent

from comfy_service.client.errors import (
    Forbidden,
    TaskNotFound,
    Unauthorized,
    WaitTimeout,
    error_from_response,
)
from comfy_service.client.models import FINAL, Progress, Task, progress_of
from comfy_service.client.operations import get_task, task_path
from comfy_service.client.protocol import (
    Call,
    Close,
    Operation,
    ReadEvent,
    RetryPolicy,
    Send,
    Sleep,
    exchange,
)

OnProgress = Callable[[Progress], None]
RAISED = (TaskNotFound, Unauthorized, Forbidden)  # the task is not ours to follow: say so


@dataclass(frozen=True)
class WaitOptions:
    timeout_s: float | None = None  # None: as long as it takes
    poll_interval_s: float = 0.5  # polling only
    stream_read_s: float = 60.0  # silence (no event, no keep-alive) that counts as a dropped stream
    reconnects: int = 5  # dropped streams in a row (no event between) before polling instead


class Tracker:
    """The task's latest status and progress; tells the callback whenever either changes."""

    def __init__(self, task_id: str, on_progress: OnProgress | None) -> None:
        self.last = Progress(task_id, "")  # nothing told yet: the first state always is
        self.on_progress = on_progress
        self.done = False

    def _tell(self, progress: Progress) -> None:
        if progress != self.last:
            self.last = progress
            if self.on_progress is not None:
                self.on_progress(progress)

    def event(self, event: ServerSentEvent) -> None:
        if event.event not in ("state", "progress", "end"):
            return  # outputs (the final GET has them), keep-alives
        data: dict[str, Any] = json.loads(event.data)
        if event.event == "progress":
            self._tell(progress_of(self.last.task_id, self.last.status, data, self.last.node))
            return
        self.record(data)
        self.done = self.done or event.event == "end"

    def record(self, data: dict[str, Any]) -> None:
        """A state or end event's data, or a polled task record."""
        status = str(data["status"])
        progress = data.get("progress")
        if progress:
            now = progress_of(self.last.task_id, status, progress, data.get("node"))
        elif status == "succeeded":
            now = replace(self.last, status=status, fraction=1.0)
        elif status == "queued":  # back in line (a failover): its sampling starts again
            now = Progress(self.last.task_id, status)
        else:
            now = replace(self.last, status=status, node=data.get("node") or self.last.node)
        self._tell(now)
        self.done = self.done or status in FINAL


class Deadline:
    def __init__(self, task_id: str, timeout_s: float | None) -> None:
        self.task_id, self.timeout_s = task_id, timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self) -> None:
        self.left(0.0)

    def left(self, cap: float) -> float:
        """Seconds left (at most `cap`); WaitTimeout once none are."""
        if self.at is None or self.timeout_s is None:
            return cap
        left = self.at - time.monotonic()
        if left <= 0:
            raise WaitTimeout(self.task_id, self.timeout_s)
        return min(cap, left)


def wait(task_id: str, timeout_s: float | None, options: WaitOptions | None,
         on_progress: OnProgress | None, policy: RetryPolicy) -> Operation[Task]:
    """The task once it has ended (succeeded, failed or cancelled); `timeout_s`, when given,
    overrides the options'."""
    options = options or WaitOptions()
    if timeout_s is not None:
        options = replace(options, timeout_s=timeout_s)
    tracker, deadline = Tracker(task_id, on_progress), Deadline(task_id, options.timeout_s)
    followed = yield from follow(task_id, tracker, deadline, options, policy)
    if not followed:
        yield from poll(task_id, tracker, deadline, options, policy)
    return (yield from get_task(task_id, policy))


def follow(task_id: str, tracker: Tracker, deadline: Deadline, options: WaitOptions,
           policy: RetryPolicy) -> Operation[bool]:
    """Read the task's events to `end` (True), or give up on the stream (False)."""
    last_id: str | None = None
    dropped = 0
    while dropped <= options.reconnects:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        call = Call("GET", task_path(task_id, "/events"), headers=headers,
                    read_timeout=deadline.left(options.stream_read_s))
        try:
            response: httpx.Response = yield Send(call, stream=True)
            if response.status_code >= 400:
                error = error_from_response(response)
                if isinstance(error, RAISED):
                    raise error
                return False
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                yield Close()
                return False
            while (event := (yield ReadEvent())) is not None:
                dropped = 0
                last_id = event.id or last_id
                tracker.event(event)
                if tracker.done:
                    yield Close()
                    return True
                deadline.check()
        except httpx.TransportError:
            pass  # dropped, or silent past stream_read_s: resume after the last event seen
        yield Close()
        dropped += 1
        deadline.check()
        if dropped > 1:
            yield Sleep(deadline.left(policy.backoff_s))
    return False


def poll(task_id: str, tracker: Tracker, deadline: Deadline, options: WaitOptions,
         policy: RetryPolicy) -> Operation[None]:
    while True:
        body = (yield from exchange(Call("GET", task_path(task_id)), policy)).json()
        tracker.record(body)
        if tracker.done:
            return
        yield Sleep(deadline.left(options.poll_interval_s))
