"""The HTTP and WebSocket routes of a ComfyUI server (0.3.64 or 0.33.0), served by Starlette.

Every route is also served under /api/, as ComfyUI does; 0.33.0's jobs API only there. Only
/sim/* is ours (fault injection). What differs by version comes from comfyui_sim.versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import pathlib
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from comfy_service.comfyui.object_info import NodeClass
from comfy_service.comfyui.validation import PromptCrash, validate_prompt
from comfy_service.comfyui.versions import InvalidPromptId
from comfyui_sim import catalog, images, jobs_api, versions
from comfyui_sim.executor import Executor, Folders
from comfyui_sim.faults import Faults
from comfyui_sim.messages import Client, Hub
from comfyui_sim.prompt_queue import PromptQueue, QueueItem
from comfyui_sim.settings import SimSettings
from comfyui_sim.shared_gpu import SharedGpu
from comfyui_sim.view_types import view_content_type

log = logging.getLogger("comfyui_sim")

COMFYUI_VERSION = versions.DEFAULT  # the version served unless settings choose another
SERVER_HEADER = f"Python/{sys.version_info.major}.{sys.version_info.minor} comfyui-sim"
CRASH_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status,
                    media_type="application/json; charset=utf-8")


def empty(status: int = 200) -> Response:
    return Response(b"", status_code=status)


def crashed() -> Response:
    return Response(CRASH_TEXT, status_code=500, media_type="text/plain; charset=utf-8")


class SegmentConvertor(Convertor[str]):
    """aiohttp's default path-parameter pattern: braces never match, so `/history/{uuid}` in
    braces is a 404 in the real server (newer/v0.3.64 post_prompt_uuid_braces_history)."""

    regex = "[^{}/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())


class SimNode:
    """One simulated ComfyUI server: its queue, executor, sockets, files and faults."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.profile = versions.profile(settings.comfyui_version)
        for folder in (settings.output_dir, settings.input_dir, settings.temp_dir,
                       settings.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.hub = Hub()
        self.faults = Faults()
        self.queue = PromptQueue(on_change=self._queue_changed)
        self.number = 0
        self.gpu = (SharedGpu(settings.gpu_dir, settings.gpu_id)
                    if settings.gpu_id is not None else None)
        self.executor = Executor(
            self.hub, self.queue, self.faults,
            Folders(settings.output_dir, settings.temp_dir, settings.input_dir),
            self.node_classes, settings.step_ms, settings.preview_method != "none",
            cache_keeps_all=self.profile.cache_keeps_all, gpu=self.gpu,
            cheap_images=settings.cheap_images)

    def inventory(self) -> catalog.ModelInventory:
        return catalog.inventory_from_dirs(self.settings.models_dir, self.settings.input_dir,
                                           self.settings.declared_models())

    def node_classes(self) -> dict[str, NodeClass]:
        return catalog.node_classes(self.inventory(), self.profile.object_info_file)

    def object_info(self) -> dict[str, dict[str, Any]]:
        return catalog.object_info(self.inventory(), self.profile.object_info_file)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_changed(self) -> None:
        self.hub.send("status", {"status": self.queue_info()})

    def folder_for(self, kind: str) -> pathlib.Path | None:
        return {"output": self.settings.output_dir, "input": self.settings.input_dir,
                "temp": self.settings.temp_dir}.get(kind)


# --- routes ------------------------------------------------------------------------------------
Handler = Callable[[SimNode, Request], Awaitable[Response]]


async def _json_body(request: Request) -> Any:
    return json.loads(await request.body())


async def post_prompt(node: SimNode, request: Request) -> Response:
    try:
        body = await _json_body(request)
    except ValueError:
        return crashed()
    if not isinstance(body, (dict, list, str)):
        return crashed()
    if isinstance(body, dict) and "number" in body:
        number: float = float(body["number"])
    else:
        number = node.number
        if isinstance(body, dict) and body.get("front"):
            number = -number
        node.number += 1
    if not isinstance(body, dict) or "prompt" not in body:
        error = {"type": "no_prompt", "message": "No prompt provided",
                 "details": "No prompt provided", "extra_info": {}}
        return json_response({"error": error, "node_errors": {}}, 400)
    prompt = body["prompt"]
    rules = node.profile.rules
    try:
        prompt_id = rules.client_prompt_id(body) or str(uuid.uuid4())
    except InvalidPromptId as exc:
        return json_response({"error": exc.error, "node_errors": {}}, 400)
    try:
        result = validate_prompt(prompt, node.node_classes(), body.get("partial_execution_targets"),
                                 lambda name: (node.settings.input_dir / str(name)).is_file(),
                                 missing_node=rules.missing_node_error)
    except PromptCrash:
        return crashed()
    extra_data = body.get("extra_data", {})
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    extra_data.update(node.profile.queue_stamps(int(time.time() * 1000)))
    if not result.ok:
        return json_response({"error": result.error, "node_errors": result.node_errors}, 400)
    node.queue.put(QueueItem(number, prompt_id, prompt, extra_data, result.outputs))
    return json_response({"prompt_id": prompt_id, "number": number,
                          "node_errors": result.node_errors})


async def get_prompt(node: SimNode, request: Request) -> Response:
    return json_response(node.queue_info())


async def get_queue(node: SimNode, request: Request) -> Response:
    running = [item.as_list() for item in node.queue.running.values()]
    pending = [item.as_list() for item in node.queue.pending()]
    return json_response({"queue_running": running, "queue_pending": pending})


async def post_queue(node: SimNode, request: Request) -> Response:
    body = await _json_body(request)
    if body.get("clear"):
        node.queue.wipe()
    for prompt_id in body.get("delete", []):
        node.queue.delete(prompt_id)
    return empty()


async def post_interrupt(node: SimNode, request: Request) -> Response:
    try:
        body = await _json_body(request)
    except ValueError:
        body = {}
    target = body.get("prompt_id") if isinstance(body, dict) else None
    if not target or any(item.prompt_id == target for item in node.queue.running.values()):
        node.executor.interrupt()
    return empty()


async def post_free(node: SimNode, request: Request) -> Response:
    body = await _json_body(request)
    if body.get("free_memory"):
        node.executor.free()
    return empty()


async def get_history(node: SimNode, request: Request) -> Response:
    max_items = request.query_params.get("max_items")
    return json_response(node.queue.get_history(
        max_items=int(max_items) if max_items is not None else None))


async def get_history_item(node: SimNode, request: Request) -> Response:
    return json_response(node.queue.get_history(request.path_params["prompt_id"]))


async def post_history(node: SimNode, request: Request) -> Response:
    body = await _json_body(request)
    if body.get("clear"):
        node.queue.history.clear()
    for prompt_id in body.get("delete", []):
        node.queue.history.pop(prompt_id, None)
    return empty()


async def get_object_info(node: SimNode, request: Request) -> Response:
    return json_response(node.object_info())


async def get_object_info_class(node: SimNode, request: Request) -> Response:
    name = request.path_params["node_class"]
    info = node.object_info()
    return json_response({name: info[name]} if name in info else {})


async def get_system_stats(node: SimNode, request: Request) -> Response:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return json_response(versions.system_stats(node.profile, total, free, sys.argv))


async def get_features(node: SimNode, request: Request) -> Response:
    return json_response(node.profile.features)


async def get_embeddings(node: SimNode, request: Request) -> Response:
    return json_response([])


async def get_models(node: SimNode, request: Request) -> Response:
    return json_response(list(catalog.MODEL_FOLDERS))


async def get_models_folder(node: SimNode, request: Request) -> Response:
    folder = request.path_params["folder"]
    if folder not in catalog.MODEL_FOLDERS:
        return empty(404)
    return json_response(node.inventory().listing(folder))


async def get_view(node: SimNode, request: Request) -> Response:
    query = request.query_params
    if "filename" not in query:
        return empty(404)
    filename = query["filename"]
    if not filename:
        return empty(400)
    if filename[0] == "/" or ".." in filename:
        return empty(400)
    base = node.folder_for(query.get("type", "output"))
    if base is None:
        return empty(400)
    base_str = os.path.abspath(base)
    folder = base_str
    if "subfolder" in query:
        folder = os.path.join(base_str, query["subfolder"])
        if os.path.commonpath((os.path.abspath(folder), base_str)) != base_str:
            return empty(403)
    name = os.path.basename(filename)
    path = pathlib.Path(folder) / name
    if not path.is_file():
        return empty(404)
    disposition = {"Content-Disposition": f'filename="{name}"'}
    converted = images.converted_for_view(path, query.get("preview"), query.get("channel"))
    if converted is not None:
        body, media_type = converted
        return Response(body, media_type=media_type, headers=disposition)
    stat = path.stat()
    # Content-Type as a header, not media_type: Starlette would append a charset to text types.
    headers = {**disposition, "Etag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"',
               "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
               "Accept-Ranges": "bytes", "Content-Type": view_content_type(name)}
    return Response(path.read_bytes(), headers=headers)


async def post_upload_image(node: SimNode, request: Request) -> Response:
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str) or not upload.filename:
        return empty(400)
    base = node.folder_for(str(form.get("type") or "input")) or node.settings.input_dir
    base_str = os.path.abspath(base)
    subfolder = str(form.get("subfolder", ""))
    folder = os.path.join(base_str, os.path.normpath(subfolder)) if subfolder else base_str
    filename = upload.filename
    target = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((base_str, target)) != base_str:
        return empty(400)
    os.makedirs(folder, exist_ok=True)
    data = await upload.read()
    if str(form.get("overwrite")) not in ("true", "1"):
        stem, ext = os.path.splitext(filename)
        counter = 1
        while os.path.exists(target):
            existing = pathlib.Path(target).read_bytes()
            if hashlib.sha256(existing).digest() == hashlib.sha256(data).digest():
                break
            filename = f"{stem} ({counter}){ext}"
            target = os.path.join(folder, filename)
            counter += 1
    pathlib.Path(target).write_bytes(data)
    kind = str(form.get("type") or "input")
    return json_response({"name": filename, "subfolder": subfolder, "type": kind})


# --- simulator administration (not part of ComfyUI) ---------------------------------------------
async def sim_faults(node: SimNode, request: Request) -> Response:
    if request.method == "POST":
        try:
            node.faults.update(await _json_body(request))
        except (ValueError, TypeError, AttributeError) as exc:
            return json_response({"error": str(exc)}, 400)
        if node.faults.state.crash:
            # Answer first, then die the way a crashed ComfyUI does: no goodbye to anyone.
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)
        node.hub.paused.clear() if node.faults.hung else node.hub.paused.set()
        if node.faults.state.refuse_ws:
            for client in list(node.hub.clients.values()):
                with contextlib.suppress(Exception):
                    await client.close()  # type: ignore[attr-defined]
    return json_response(node.faults.as_dict())


async def sim_info(node: SimNode, request: Request) -> Response:
    return json_response({"simulator": "comfyui-sim", "comfyui_version": node.profile.version,
                          "pid": os.getpid(), "step_ms": node.faults.step_ms(
                              node.settings.step_ms), "base_dir": str(node.settings.base_dir),
                          "host": platform.node(),
                          "gpu_id": node.gpu.gpu_id if node.gpu else None,
                          "gpu_sampling": node.gpu.count() if node.gpu else None})


# --- WebSocket -----------------------------------------------------------------------------------
async def websocket_endpoint(node: SimNode, websocket: WebSocket) -> None:
    if node.faults.state.refuse_ws:
        await websocket.close(code=1013)
        return
    await websocket.accept()
    sid = websocket.query_params.get("clientId", "") or uuid.uuid4().hex

    async def send_text(text: str) -> None:
        await websocket.send_text(text)

    async def send_bytes(data: bytes) -> None:
        await websocket.send_bytes(data)

    client = Client(send_text, send_bytes)
    client.close = websocket.close  # type: ignore[attr-defined]
    node.hub.connect(sid, client)
    try:
        await node.hub.send_now(sid, "status", {"status": node.queue_info(), "sid": sid})
        if node.executor.client_id == sid and node.executor.last_node_id is not None:
            await node.hub.send_now(sid, "executing", {"node": node.executor.last_node_id})
        first = True
        while True:
            text = await websocket.receive_text()
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                client.feature_flags = data.get("data") or {}
                await node.hub.send_now(sid, "feature_flags", node.profile.features)
            first = False
    except (WebSocketDisconnect, RuntimeError, KeyError):
        pass
    finally:
        node.hub.disconnect(sid, client)


# --- application ---------------------------------------------------------------------------------
HTTP_ROUTES: list[tuple[str, str, Handler]] = [
    ("/prompt", "POST", post_prompt), ("/prompt", "GET", get_prompt),
    ("/queue", "GET", get_queue), ("/queue", "POST", post_queue),
    ("/interrupt", "POST", post_interrupt), ("/free", "POST", post_free),
    ("/history", "GET", get_history), ("/history", "POST", post_history),
    ("/history/{prompt_id:segment}", "GET", get_history_item),
    ("/object_info", "GET", get_object_info),
    ("/object_info/{node_class:segment}", "GET", get_object_info_class),
    ("/system_stats", "GET", get_system_stats), ("/features", "GET", get_features),
    ("/embeddings", "GET", get_embeddings), ("/models", "GET", get_models),
    ("/models/{folder:segment}", "GET", get_models_folder), ("/view", "GET", get_view),
    ("/upload/image", "POST", post_upload_image),
]


def _bind(node: SimNode, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(node, request)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.exception("request failed: %s %s", request.method, request.url.path)
            return crashed()
    return endpoint


def _routes(node: SimNode) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for prefix in ("", "/api"):
        for path, method, handler in HTTP_ROUTES:
            routes.append(Route(prefix + path, _bind(node, handler), methods=[method]))

        async def ws(websocket: WebSocket) -> None:
            await websocket_endpoint(node, websocket)
        routes.append(WebSocketRoute(prefix + "/ws", ws))
    if node.profile.rules.has_jobs_api:
        routes += [Route("/api" + path, _bind(node, handler), methods=[method])
                   for path, method, handler in jobs_api.ROUTES]
    routes.append(Route("/sim/faults", _bind(node, sim_faults), methods=["GET", "POST"]))
    routes.append(Route("/sim/info", _bind(node, sim_info), methods=["GET"]))
    return routes


class HangAndHeaders:
    """ASGI middleware: sets the Server header, and stalls everything but /sim/ while hung."""

    def __init__(self, app: ASGIApp, node: SimNode) -> None:
        self.app = app
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope["path"].startswith("/sim/"):
            await self.node.faults.wait_while_hung()

        async def send_with_server(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"server", SERVER_HEADER.encode())]
            await send(message)
        await self.app(scope, receive, send_with_server)


def create_app(settings: SimSettings) -> ASGIApp:
    node = SimNode(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(node.hub.publish_forever(), name="publisher"),
                 asyncio.create_task(node.executor.run_forever(), name="executor")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if node.gpu is not None:
                node.gpu.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        # ComfyUI serves its frontend as a static route on "/", which matches any path for
        # GET and HEAD only: other methods on an unknown path get aiohttp's 405.
        if request.method not in ("GET", "HEAD"):
            return Response("405: Method Not Allowed", status_code=405,
                            media_type="text/plain; charset=utf-8")
        return Response(b"", status_code=404, media_type="application/octet-stream")

    app = Starlette(routes=_routes(node), lifespan=lifespan,
                    exception_handlers={404: not_found})
    app.state.node = node
    return HangAndHeaders(app, node)
