"""The HTTP side of ComfyUI 0.33.0's jobs API (/api/jobs...), over comfyui_sim.jobs.

Registered only under /api/ and only when the simulated version has it, as in the real server.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from comfy_service.comfyui.versions import is_canonical_uuid
from comfyui_sim import jobs

if TYPE_CHECKING:
    from comfyui_sim.server import SimNode


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status,
                    media_type="application/json; charset=utf-8")


def _all(node: SimNode) -> list[jobs.Job]:
    return jobs.all_jobs([item.as_list() for item in node.queue.running.values()],
                         [item.as_list() for item in node.queue.pending()],
                         node.queue.history)


def cancel(node: SimNode, prompt_id: str) -> bool:
    """Interrupt a running prompt or drop a pending one, as a targeted /interrupt or a
    /queue delete would; a finished or unknown id changes nothing."""
    if any(item.prompt_id == prompt_id for item in node.queue.running.values()):
        node.executor.interrupt()
        return True
    return node.queue.delete(prompt_id)


async def get_jobs(node: SimNode, request: Request) -> Response:
    try:
        query = jobs.parse_query(request.query_params)
    except jobs.JobQueryError as exc:
        return _json({"error": str(exc)}, 400)
    return _json(jobs.listing(_all(node), query))


async def get_job(node: SimNode, request: Request) -> Response:
    job = jobs.find(_all(node), request.path_params["job_id"])
    if job is None:
        return _json({"error": "Job not found"}, 404)
    return _json(job.detail())


async def post_job_cancel(node: SimNode, request: Request) -> Response:
    return _json({"cancelled": cancel(node, request.path_params["job_id"])})


async def post_jobs_cancel(node: SimNode, request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        return _json({"error": "job_ids must be a list"}, 400)
    invalid = [i for i in ids if not is_canonical_uuid(i)]
    if invalid:
        return _json({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}, 400)
    results = [cancel(node, prompt_id) for prompt_id in ids]
    return _json({"cancelled": any(results)})


ROUTES = [
    ("/jobs", "GET", get_jobs),
    ("/jobs/cancel", "POST", post_jobs_cancel),
    ("/jobs/{job_id:segment}", "GET", get_job),
    ("/jobs/{job_id:segment}/cancel", "POST", post_job_cancel),
]
