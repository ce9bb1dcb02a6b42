"""ComfyUI 0.33.0's jobs view (GET /api/jobs): queue and history items as job records.

Pure: the HTTP handlers (comfyui_sim.jobs_api) pass in the queue and history as the API
shows them and get back the bodies a real 0.33.0 answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STATUSES: tuple[str, ...] = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_FIELDS: tuple[str, ...] = ("created_at", "execution_duration")
PREVIEWABLE_KINDS: tuple[str, ...] = ("images", "video", "audio", "gifs", "3d")


class JobQueryError(ValueError):
    """A query string the real server answers with 400 {"error": message}."""


@dataclass(frozen=True)
class JobQuery:
    statuses: tuple[str, ...] | None = None
    workflow_id: str | None = None
    sort_by: str = "created_at"
    descending: bool = True
    limit: int | None = None
    offset: int = 0


def _int(params: Mapping[str, str], name: str) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError:
        raise JobQueryError(f"Invalid {name}: must be an integer") from None
    if value < 0:
        raise JobQueryError(f"Invalid {name}: must be non-negative")
    return value


def parse_query(params: Mapping[str, str]) -> JobQuery:
    statuses = None
    if params.get("status"):
        statuses = tuple(s.strip() for s in params["status"].split(",") if s.strip())
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise JobQueryError(f"Invalid status value(s): {', '.join(bad)}. "
                                f"Valid values: {', '.join(STATUSES)}")
    sort_by = params.get("sort_by", "created_at")
    if sort_by not in SORT_FIELDS:
        raise JobQueryError(f"Invalid sort_by: {sort_by}. Valid values: {', '.join(SORT_FIELDS)}")
    order = params.get("sort_order", "desc").lower()
    if order not in ("asc", "desc"):
        raise JobQueryError(f"Invalid sort_order: {order}. Valid values: asc, desc")
    return JobQuery(statuses=statuses, workflow_id=params.get("workflow_id"), sort_by=sort_by,
                    descending=order == "desc", limit=_int(params, "limit"),
                    offset=_int(params, "offset") or 0)


def history_status(execution_status: Mapping[str, Any]) -> str:
    """A finished prompt's job status: an interrupt (via /interrupt or cancel) is `cancelled`."""
    if execution_status.get("status_str") == "success":
        return "completed"
    events = [m[0] for m in execution_status.get("messages", [])]
    return "cancelled" if "execution_interrupted" in events else "failed"


@dataclass(frozen=True)
class Job:
    """One prompt as the jobs API sees it: queued (no history yet) or finished."""

    prompt_id: str
    status: str
    number: float
    prompt: Mapping[str, Any]
    extra_data: Mapping[str, Any]
    outputs: Mapping[str, Any] | None = None
    execution_status: Mapping[str, Any] | None = None

    @property
    def create_time(self) -> int:
        return int(self.extra_data.get("create_time") or 0)

    @property
    def workflow_id(self) -> Any:
        workflow = (self.extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
        return workflow.get("id") if isinstance(workflow, dict) else None

    def _times(self) -> tuple[int | None, int | None]:
        stamps = [(m[0], m[1].get("timestamp")) for m in
                  (self.execution_status or {}).get("messages", [])]
        start = next((t for event, t in stamps if event == "execution_start"), None)
        return start, (stamps[-1][1] if stamps else None)

    @property
    def duration(self) -> int:
        start, end = self._times()
        return (end - start) if start is not None and end is not None else 0

    def _media(self) -> list[dict[str, Any]]:
        found = []
        for node_id, output in (self.outputs or {}).items():
            for kind, items in (output or {}).items():
                if kind in PREVIEWABLE_KINDS and isinstance(items, list):
                    found += [{**item, "nodeId": node_id, "mediaType": kind}
                              for item in items if isinstance(item, dict) and "filename" in item]
        return found

    def summary(self) -> dict[str, Any]:
        """A GET /api/jobs list item."""
        item: dict[str, Any] = {"id": self.prompt_id, "status": self.status,
                                "priority": self.number, "create_time": self.create_time}
        if self.execution_status is not None:
            start, end = self._times()
            item.update({"execution_start_time": start, "execution_end_time": end})
        media = self._media()
        item.update({"outputs_count": len(media), "previewable_outputs_count": len(media)})
        if media:
            item["preview_output"] = media[0]
        return item

    def detail(self) -> dict[str, Any]:
        """GET /api/jobs/{id}: a finished job adds its outputs, status and workflow."""
        item = self.summary()
        if self.execution_status is not None:
            item.update({"outputs": self.outputs or {},
                         "execution_status": dict(self.execution_status),
                         "workflow": {"prompt": self.prompt, "extra_data": self.extra_data}})
        return item


def queued(entry: list[Any], status: str) -> Job:
    """A /queue item ([number, id, prompt, extra_data, outputs]) still pending or running."""
    return Job(entry[1], status, entry[0], entry[2], entry[3])


def finished(prompt_id: str, entry: Mapping[str, Any]) -> Job:
    prompt = entry["prompt"]
    return Job(prompt_id, history_status(entry["status"]), prompt[0], prompt[2], prompt[3],
               entry.get("outputs") or {}, entry["status"])


def all_jobs(running: Iterable[list[Any]], pending: Iterable[list[Any]],
             history: Mapping[str, Mapping[str, Any]]) -> list[Job]:
    jobs = [queued(e, "in_progress") for e in running] + [queued(e, "pending") for e in pending]
    return jobs + [finished(pid, entry) for pid, entry in history.items()]


def find(jobs: Iterable[Job], prompt_id: str) -> Job | None:
    return next((job for job in jobs if job.prompt_id == prompt_id), None)


def listing(jobs: Iterable[Job], query: JobQuery) -> dict[str, Any]:
    """The GET /api/jobs body: filtered, sorted (newest first by default), one page of it."""
    selected = [job for job in jobs
                if (query.statuses is None or job.status in query.statuses)
                and (query.workflow_id is None or job.workflow_id == query.workflow_id)]
    if query.sort_by == "execution_duration":
        selected.sort(key=lambda job: job.duration, reverse=query.descending)
    else:
        selected.sort(key=lambda job: (job.create_time, job.number), reverse=query.descending)
    end = None if query.limit is None else query.offset + query.limit
    page = selected[query.offset:end]
    return {"jobs": [job.summary() for job in page],
            "pagination": {"offset": query.offset, "limit": query.limit, "total": len(selected),
                           "has_more": query.offset + len(page) < len(selected)}}
