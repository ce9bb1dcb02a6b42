"""One task on one node: submit (or re-attach), follow it to its end, store outputs, free the slot.

Outcomes: succeeded with outputs; failed with execution_error, invalid_workflow or timeout;
cancelled; or, when the node is lost, back in the ready queue with one attempt spent (failed
with node_lost once MAX_ATTEMPTS is reached); or, when its node drains before the prompt
started, taken off the node and back in the ready queue with the attempt given back. A result
that arrives for an attempt that is no longer current (the task already moved to another node)
is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from actors import tasks
from actors.node_inputs import NodeInputs
from actors.node_link import LOST, NodeLink
from actors.retention import Retention
from actors.speeds import SpeedEstimator
from actors.store import TaskStore
from actors.tasks import TaskRecord
from comfy_service import metrics
from comfy_service.errors import ExecutionError, NodeLost, TaskFailure, TaskTimeout
from comfy_service.logs import event
from comfy_service.media import output_type
from comfy_service.outputs import output_files, output_key
from comfy_service.settings import Settings
from comfy_service.storage import BlobStore

log = logging.getLogger("actors.execution")

SILENCE_CHECK_S = 2.0      # no message for this long: look the prompt up in history
CANCEL_CHECK_S = 2.0       # the record's cancel flag is read at most this often (a fallback:
                           # a cancel arrives on the cs:cancel channel and nudges the task)
ADOPTED_POLL_S = 0.25      # an adopted prompt reports to the dead worker's socket: poll
PROGRESS_WRITE_S = 0.2     # at most this often a progress update is written to Redis
# What shows a node making progress on a task (NodeStuck: slots used and none of these).
PROGRESS_EVENTS = frozenset({"execution_start", "progress", "executing", "executed",
                             "execution_success", "execution_error", "execution_interrupted"})


def speed_kind(record: TaskRecord) -> str:
    """What a prompt's time is compared with: the same workflow at the same size."""
    params = record.params or {}
    size = f"@{params['width']}x{params['height']}" if "width" in params and "height" in params \
        else ""
    return f"{record.workflow or 'workflow_json'}{size}"


class _Cancelled(Exception):
    pass


class _MovedBack(Exception):
    """The prompt was taken off its draining node before it started."""


class _StaleAttempt(Exception):
    """The record moved on (another attempt, or it ended): this run's result is discarded."""


@dataclass
class WorkerContext:
    settings: Settings
    store: TaskStore
    links: dict[str, NodeLink]
    blobs: BlobStore
    retention: Retention
    inputs: NodeInputs
    speeds: SpeedEstimator = field(default_factory=SpeedEstimator)
    owned: dict[str, TaskRun] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    releases: int = 0  # slots this worker freed so far (a bind pass re-reads when it moves)
    # Told the node's name each time this worker frees a slot there (the scheduler counts it).
    on_release: Callable[[str], None] = field(default=lambda node: None)
    # Nodes draining (availability.DRAINING): prompts still waiting there go back in line.
    draining: set[str] = field(default_factory=set)


class TaskRun:
    def __init__(self, ctx: WorkerContext, task_id: str, link: NodeLink,
                 adopted: bool = False) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.link = link
        self.adopted = adopted
        self.attempt = 0
        self._cancel = asyncio.Event()
        self._deadline: float | None = None
        self._interrupt_sent = False
        self._last_progress_write = 0.0
        self._cancel_checked = 0.0
        self._executing_since: float | None = None  # for the node's speed (actors/speeds.py)
        self._steps = 0.0
        self._messages: asyncio.Queue[dict[str, Any]] | None = None
        self.handle: asyncio.Task[None] | None = None

    def request_cancel(self) -> None:
        self._cancel.set()
        self.nudge()

    def nudge(self) -> None:
        """Look at cancel and drain requests now, not at the next poll."""
        if self._messages is not None:
            self._messages.put_nowait({"type": "_wake"})

    # --- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except RedisError as exc:  # raised while handling an outcome: the lease decides
            event(log, "task.store_unreachable", logging.WARNING, task_id=self.task_id,
                  reason=f"{type(exc).__name__}: {exc}", then="adoption after the lease")

    async def _run(self) -> None:
        store, started = self.ctx.store, time.monotonic()
        messages = self._messages = self.link.follow(self.task_id)
        # Until an outcome is known and recorded, the slot and lease stay: if recording it
        # fails (Redis away), the lease lapses and a worker adopts the task, never a task
        # left with no slot, no lease and no end.
        outcome = "handed-off"
        try:
            record = await store.get(self.task_id)
            if record is None or record.final:
                outcome = "released"
                return
            if self.adopted:
                metrics.REATTACHMENTS.inc()
                self.attempt = record.attempts
                event(log, "task.adopted", task_id=self.task_id, node=self.link.name,
                      attempt=record.attempts)
                outcome = await self._reattach(record, messages)
            else:
                try:
                    record = await store.update(self.task_id,
                                                lambda r: tasks.bound(r, self.link.name))
                except tasks.InvalidTransition:
                    outcome = "released"
                    return
                assert record is not None
                self.attempt = record.attempts
                event(log, "task.bound", task_id=self.task_id, node=self.link.name,
                      attempt=self.attempt)
                await self._submit(record)
                outcome = await self._follow(record, messages, poll=False)
        except _StaleAttempt:
            outcome = "stale"
        except _MovedBack:
            outcome = await self._requeue_moved()
        except _Cancelled:
            outcome = await self._finish_cancelled()
        except NodeLost as exc:
            outcome = await self._node_lost(exc)
        except TaskFailure as exc:
            outcome = await self._fail(exc)
        except asyncio.CancelledError:
            outcome = "handed-off"  # worker shutting down: the lease lapses, another adopts
            raise
        except RedisError as exc:
            # Redis restarting or out of reach: what we would write may not land, so neither
            # fail the task nor free its slot here; its lease lapses and a worker adopts it and
            # finds out from the node where it stands (as after a worker crash).
            event(log, "task.store_unreachable", logging.WARNING, task_id=self.task_id,
                  reason=f"{type(exc).__name__}: {exc}", then="adoption after the lease")
        except Exception as exc:  # a bug must not leave the task hanging: fail it with a reason
            event(log, "task.crashed", logging.ERROR, exc_info=True, task_id=self.task_id)
            outcome = await self._fail(TaskFailure(f"internal error: {type(exc).__name__}"))
        finally:
            self.link.unfollow(self.task_id)
            self.ctx.owned.pop(self.task_id, None)
            if outcome != "handed-off":
                await store.release(self.link.name, self.task_id)
                self.ctx.on_release(self.link.name)
                self.ctx.releases += 1
                self.ctx.wake.set()
            event(log, "task.run_ended", task_id=self.task_id, node=self.link.name,
                  attempt=self.attempt, outcome=outcome,
                  duration_ms=int((time.monotonic() - started) * 1000))

    # --- following the prompt ----------------------------------------------------------------
    async def _follow(self, record: TaskRecord, messages: asyncio.Queue[dict[str, Any]],
                      poll: bool) -> str:
        timeout_s = record.timeout_s or self.ctx.settings.default_timeout_s
        if record.status == tasks.RUNNING:
            self._deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        wait_s = ADOPTED_POLL_S if poll else 0.5
        while True:
            if self._cancel.is_set():
                await self._stop_on_node(record)
                self._cancel.clear()
            if record.status == tasks.QUEUED and self.link.name in self.ctx.draining:
                await self._take_off_draining_node()
            if self._deadline is not None and time.monotonic() > self._deadline \
                    and not self._interrupt_sent:
                await self._send_interrupt()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the get in a new Task
                async with asyncio.timeout(wait_s):
                    message = await messages.get()
            except TimeoutError:
                if poll or time.monotonic() - quiet_since > SILENCE_CHECK_S:
                    quiet_since = time.monotonic()
                    entry = await self.link.http.history(self.task_id)
                    if entry is not None:
                        return await self._from_history(entry)
                    if poll:
                        running, pending = await self.link.http.queue()
                        if self.task_id in running and record.status != tasks.RUNNING:
                            record = await self._started()
                            self._deadline = time.monotonic() + timeout_s
                        elif self.task_id not in running + pending:
                            # Finished between the two questions, or really gone?
                            entry = await self.link.http.history(self.task_id)
                            if entry is not None:
                                return await self._from_history(entry)
                            raise NodeLost("the prompt vanished from its node") from None
                await self._check_cancel_flag()
                continue
            quiet_since = time.monotonic()
            kind = message["type"]
            data = message.get("data") or {}
            if message is LOST:
                raise NodeLost(f"lost the connection to {self.link.name}")
            if kind in PROGRESS_EVENTS:
                metrics.NODE_PROGRESS.labels(self.link.name).inc()
            if kind == "execution_start":
                self._executing_since = time.monotonic()
                record = await self._started()
                self._deadline = time.monotonic() + timeout_s
            elif kind == "progress":
                self._steps = max(self._steps, float(data.get("max") or 0))
                await self._progress(data.get("value", 0), data.get("max", 0))
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                entry = await self.link.http.history(self.task_id)
                if entry is None:  # history lags the message by a moment
                    continue
                return await self._from_history(entry)

    async def _reattach(self, record: TaskRecord, messages: asyncio.Queue[dict[str, Any]]) -> str:
        """Pick up a task whose worker died: it may have finished, be running, or be unknown."""
        if not self.link.healthy and not await self.link.wait_up(2.0):
            raise NodeLost(f"{self.link.name} is down")
        entry = await self.link.http.history(self.task_id)
        if entry is not None:
            return await self._from_history(entry)
        running, pending = await self.link.http.queue()
        if self.task_id in running or self.task_id in pending:
            return await self._follow(record, messages, poll=True)
        # It may have finished between the two questions: ask history once more before
        # taking it for unknown (submitting again would run it twice).
        entry = await self.link.http.history(self.task_id)
        if entry is not None:
            return await self._from_history(entry)
        event(log, "task.resubmitted", task_id=self.task_id, node=self.link.name)
        if record.status == tasks.RUNNING:
            # One change, so the attempt guard sees the record as this run knows it (two
            # updates left it with no node in between, which the guard took for stale: the
            # task stayed queued with nothing to run it).
            record = await self._update(
                lambda r: tasks.bound(tasks.requeued(r), self.link.name))
            self.attempt = record.attempts
        await self._submit(record)
        return await self._follow(record, messages, poll=False)

    async def _submit(self, record: TaskRecord) -> None:
        """Upload the task's input files to this node (again on every attempt: a new node has
        none of them), then submit the graph that reads them."""
        graph = await self.ctx.inputs.stage(record, self.link.http)
        await self.link.http.submit(graph, self.task_id, self.link.client_id)

    async def _from_history(self, entry: dict[str, Any]) -> str:
        status = entry.get("status") or {}
        if status.get("status_str") == "success":
            return await self._succeed(entry)
        last = (status.get("messages") or [[None, {}]])[-1]
        kind, data = last[0], last[1] if len(last) > 1 else {}
        if kind == "execution_error":
            raise ExecutionError(str(data.get("exception_message", "")).strip(), {
                "node_id": data.get("node_id"), "node_type": data.get("node_type"),
                "exception_type": data.get("exception_type")})
        if kind == "execution_interrupted":
            record = await self.ctx.store.get(self.task_id)
            if record is not None and record.cancel_requested:
                raise _Cancelled()
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TaskTimeout("the task ran past its timeout and was interrupted")
            raise NodeLost("the prompt was interrupted on its node by someone else")
        raise NodeLost(f"the node reported an unknown outcome {kind!r}")

    # --- record updates ----------------------------------------------------------------------
    async def _update(self, change: Any) -> TaskRecord:
        def guarded(record: TaskRecord) -> TaskRecord:
            if record.attempts != self.attempt or record.node != self.link.name:
                raise _StaleAttempt()
            return change(record)  # type: ignore[no-any-return]
        try:
            record = await self.ctx.store.update(self.task_id, guarded)
        except tasks.InvalidTransition as exc:
            raise _StaleAttempt() from exc
        if record is None:
            raise _StaleAttempt()
        return record

    async def _started(self) -> TaskRecord:
        try:
            record = await self._update(lambda r: tasks.started(r, tasks.utc_now()))
        except _StaleAttempt:
            current = await self.ctx.store.get(self.task_id)
            if current is None or current.status != tasks.CANCELLED:
                raise
            # Cancelled while it waited in the node's queue, and it started before we removed it.
            await self._send_interrupt()
            raise _Cancelled() from None
        event(log, "task.started", task_id=self.task_id, node=self.link.name,
              prompt_id=self.task_id, attempt=self.attempt)
        return record

    async def _progress(self, value: float, maximum: float) -> None:
        now = time.monotonic()
        if now - self._last_progress_write < PROGRESS_WRITE_S and value < maximum:
            return
        self._last_progress_write = now
        try:
            await self._update(lambda r: tasks.progressed(r, value, maximum))
        except _StaleAttempt:
            pass

    async def _succeed(self, entry: dict[str, Any]) -> str:
        record = await self.ctx.store.get(self.task_id)
        if record is None or record.attempts != self.attempt or record.node != self.link.name:
            raise _StaleAttempt()
        if self._executing_since is not None:
            self.ctx.speeds.observe(self.link.name, speed_kind(record),
                                    time.monotonic() - self._executing_since, self._steps)
        settings, blobs = self.ctx.settings, self.ctx.blobs
        files = output_files(entry.get("outputs") or {}, record.graph)
        if files:  # noted before the first write: even a half-stored set is swept in the end
            await self.ctx.retention.note("task", self.task_id, settings.task_ttl_s)
        outputs = []
        for index, file in enumerate(files):
            media = output_type(file["filename"])
            saved = await self.link.http.copy_output(
                file, blobs, output_key(self.task_id, index, file["filename"]),
                media.content_type, settings.max_output_bytes, settings.output_timeout_s)
            outputs.append({"index": index, "filename": file["filename"],
                            "node_id": file["node_id"], "kind": media.kind,
                            "url": f"{settings.public_url}/api/v1/tasks/{self.task_id}"
                                   f"/outputs/{index}",
                            "content_type": media.content_type,
                            "bytes": saved.size, "sha256": saved.sha256})
        await self._update(lambda r: tasks.succeeded(r, outputs, tasks.utc_now()))
        event(log, "task.succeeded", task_id=self.task_id, node=self.link.name,
              attempt=self.attempt, outputs=len(outputs))
        return "succeeded"

    async def _fail(self, failure: TaskFailure) -> str:
        try:
            await self._update(lambda r: tasks.failed(r, failure.as_error(), tasks.utc_now()))
        except _StaleAttempt:
            return "stale"
        event(log, "task.failed", logging.WARNING, task_id=self.task_id, node=self.link.name,
              attempt=self.attempt, code=failure.code)
        return f"failed:{failure.code}"

    async def _node_lost(self, exc: NodeLost) -> str:
        limit = self.ctx.settings.max_attempts

        def retry_or_fail(record: TaskRecord) -> TaskRecord:
            if record.cancel_requested:
                return tasks.cancelled(record, tasks.utc_now())
            if record.attempts >= limit:
                return tasks.failed(record, exc.as_error() | {
                    "message": f"{exc.message} (after {record.attempts} attempts)"},
                    tasks.utc_now())
            return tasks.requeued(record)
        try:
            record = await self._update(retry_or_fail)
        except _StaleAttempt:
            return "stale"
        event(log, "task.node_lost", logging.WARNING, task_id=self.task_id, node=self.link.name,
              attempt=self.attempt, reason=exc.message, next=record.status)
        if record.status == tasks.QUEUED:
            metrics.FAILOVERS.inc()
            await self.ctx.store.enqueue_ready(record)
            return "requeued"
        return record.status

    # --- cancel and timeout ------------------------------------------------------------------
    async def _check_cancel_flag(self) -> None:
        """The fallback for a cancel whose cs:cancel message this worker missed: a GET and a
        decode of the whole record (graph included), so not on every 0.5 s wait (that was
        about 5 of a task's 13 GETs)."""
        now = time.monotonic()
        if now - self._cancel_checked < CANCEL_CHECK_S:
            return
        self._cancel_checked = now
        record = await self.ctx.store.get(self.task_id)
        if record is not None and record.cancel_requested and not self._interrupt_sent:
            self._cancel.set()

    async def _stop_on_node(self, record: TaskRecord) -> None:
        """Take the prompt off its node: delete it if still waiting, interrupt it if running."""
        await self.link.http.delete_pending(self.task_id)
        running, pending = await self.link.http.queue()
        if self.task_id in running:
            await self._send_interrupt()
        elif self.task_id not in pending:
            entry = await self.link.http.history(self.task_id)
            if entry is None:
                raise _Cancelled()

    # --- drain ----------------------------------------------------------------------------------
    async def _take_off_draining_node(self) -> None:
        """The node drains and this prompt has not started: delete it from the node's queue.
        Gone from queue and history: it never ran, so it goes back in line (_MovedBack). Still
        there: it started meanwhile (or the delete lost a race) and finishes here."""
        await self.link.http.delete_pending(self.task_id)
        running, pending = await self.link.http.queue()
        if self.task_id in running or self.task_id in pending:
            return
        if await self.link.http.history(self.task_id) is None:
            raise _MovedBack()

    async def _requeue_moved(self) -> str:
        try:
            record = await self._update(tasks.moved_back)
        except _StaleAttempt:
            return "stale"
        metrics.MOVED_BACK.inc()
        await self.ctx.store.enqueue_ready(record)
        event(log, "task.moved_back", task_id=self.task_id, node=self.link.name,
              reason="the node drains and the prompt had not started")
        return "moved-back"

    async def _send_interrupt(self) -> None:
        self._interrupt_sent = True
        await self.link.http.interrupt(self.task_id)

    async def _finish_cancelled(self) -> str:
        try:
            await self._update(lambda r: tasks.cancelled(r, tasks.utc_now()))
        except _StaleAttempt:
            pass
        event(log, "task.cancelled", task_id=self.task_id, node=self.link.name)
        return "cancelled"
