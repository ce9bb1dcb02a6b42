"""Task metrics from record transitions: every status change goes through TaskStore.update, so
observing (old, new) there counts each start and each end exactly once, in whichever process
(worker, or gateway for a cancel) made it."""

from __future__ import annotations

import datetime as dt

from actors.tasks import FAILED, RUNNING, TaskRecord
from comfy_service import metrics


def _seconds(start: str, end: str) -> float:
    parse = dt.datetime.fromisoformat
    return max(0.0, (parse(end.replace("Z", "+00:00")) -
                     parse(start.replace("Z", "+00:00"))).total_seconds())


def observe_transition(old: TaskRecord, new: TaskRecord) -> None:
    workflow = new.workflow or "custom"
    if new.attempts > old.attempts:
        metrics.ATTEMPTS.inc(new.attempts - old.attempts)
    if new.status == RUNNING and old.status != RUNNING and new.started_at:
        metrics.QUEUE_WAIT_SECONDS.labels(workflow).observe(
            _seconds(new.created_at, new.started_at))
    if new.final and not old.final:
        code = str((new.error or {}).get("code") or "") if new.status == FAILED else ""
        metrics.TASKS_FINISHED.labels(new.status, code, workflow).inc()
        if new.finished_at:
            metrics.DURATION_SECONDS.labels(workflow).observe(
                _seconds(new.created_at, new.finished_at))
            if new.started_at:
                metrics.RUN_SECONDS.labels(workflow).observe(
                    _seconds(new.started_at, new.finished_at))
