"""Runs queued prompts one at a time, sending the WebSocket messages real ComfyUI sends.

Message order, caching, progress_state snapshots and error bodies follow ComfyUI 0.3.64 as the
transcripts in shared/comfyui-protocol record them (see docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_service.comfyui.object_info import NodeClass
from comfyui_sim import (
    media_nodes,  # noqa: F401  (importing it registers its behaviours)
    messages,
    packing,
)
from comfyui_sim.faults import Faults
from comfyui_sim.graph import ExecutionList, is_link, signatures
from comfyui_sim.messages import Hub
from comfyui_sim.nodes import BEHAVIOURS, NodeOutput, not_simulated
from comfyui_sim.prompt_queue import PromptQueue, QueueItem
from comfyui_sim.shared_gpu import SharedGpu

INTERRUPT_POLL_S = 0.02  # probe nodes look at the interrupt flag this often (samplers: per step)
GPU_POLL_S = 0.01  # a sampler on a shared GPU recounts the GPU's samplers this often


class Interrupted(Exception):
    """Processing interrupted (ComfyUI's InterruptProcessingException)."""


@dataclass(frozen=True)
class Folders:
    output: pathlib.Path
    temp: pathlib.Path
    input: pathlib.Path


def _now_ms() -> int:
    return int(time.time() * 1000)


def _format_input(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def _traceback(node_module: str, code: str) -> list[str]:
    """Frames shaped like ComfyUI's: its execution path, then the node's own line."""
    return [
        '  File "<comfyui>/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data("
        "prompt_id, unique_id, obj, input_data_all)\n",
        '  File "<comfyui>/execution.py", line 315, in get_output_data\n'
        "    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, "
        "input_data_all, obj.FUNCTION, allow_interrupt=True)\n",
        '  File "<comfyui>/execution.py", line 289, in _async_map_node_over_list\n'
        "    await process_inputs(input_dict, i)\n",
        '  File "<comfyui>/execution.py", line 277, in process_inputs\n'
        "    result = f(**inputs)\n",
        f'  File "<comfyui>/{node_module}", line 1, in run\n    {code}\n',
    ]


class _Run:
    """The state of one prompt's execution: its progress registry and its message log."""

    def __init__(self, item: QueueItem, client_id: str | None) -> None:
        self.item = item
        self.prompt_id = item.prompt_id
        self.client_id = client_id
        self.progress: dict[str, dict[str, Any]] = {}
        self.status_messages: list[list[Any]] = []
        self.executed: list[str] = []
        self.fail_injected = False


class _Context:
    """What a node behaviour sees (comfyui_sim.nodes.NodeContext)."""

    def __init__(self, executor: Executor, run: _Run, node_id: str, node_class: NodeClass,
                 ) -> None:
        self._executor = executor
        self._run = run
        self.node_id = node_id
        self.node_class = node_class
        self.prompt_id = run.prompt_id
        self.prompt = run.item.prompt
        self.step_seconds = executor.faults.step_ms(executor.step_ms) / 1000.0
        self.output_dir = executor.folders.output
        self.temp_dir = executor.folders.temp
        self.input_dir = executor.folders.input
        self.previews = executor.previews
        self.cheap_images = executor.cheap_images
        self._gpu_ahead = 0.0  # solo seconds of GPU work done beyond the pauses so far

    async def pause(self, seconds: float, interruptible: bool = True,
                    pixels: int | None = None) -> None:
        gpu = self._executor.gpu
        if pixels is not None and gpu is not None:
            await self._pause_on_gpu(gpu, seconds, interruptible, pixels)
            return
        deadline = time.monotonic() + seconds
        while True:
            if interruptible:
                self._executor.check_interrupt()
            await self._executor.faults.wait_while_hung()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if interruptible:
                await asyncio.sleep(min(INTERRUPT_POLL_S, left))
            else:  # nothing to poll for: only a hang may cut the sleep short
                await self._executor.faults.sleep_unless_hung(left)

    async def _pause_on_gpu(self, gpu: SharedGpu, seconds: float, interruptible: bool,
                            pixels: int) -> None:
        """`seconds` of GPU time as if alone, stretched while other nodes sample on the same
        GPU (comfyui_sim.packing): progress is credited slice by slice at the rate that the
        number of samplers, counted at the slice's start, allows."""
        owed = seconds - self._gpu_ahead
        with gpu.sampling():
            while True:
                if interruptible:
                    self._executor.check_interrupt()
                await self._executor.faults.wait_while_hung()
                rate = packing.rate(gpu.count(), pixels)
                left = owed / rate
                if left <= 0:
                    # A late wake-up is credited to the next step, so timer slack on a busy
                    # machine does not add up over a sampler's steps.
                    self._gpu_ahead = min(-owed, seconds)
                    return
                started = time.monotonic()
                await asyncio.sleep(min(GPU_POLL_S, left))
                owed -= (time.monotonic() - started) * rate

    def on_gpu(self) -> contextlib.AbstractContextManager[None]:
        """Count as sampling on the shared GPU throughout (bridges the gaps between steps)."""
        gpu = self._executor.gpu
        return gpu.sampling() if gpu is not None else contextlib.nullcontext()

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None:
        await self._executor.report_progress(self._run, self.node_id, value, total, preview)


class Executor:
    def __init__(self, hub: Hub, queue: PromptQueue, faults: Faults, folders: Folders,
                 classes: Callable[[], Mapping[str, NodeClass]], step_ms: float,
                 previews: bool, cache_keeps_all: bool = False,
                 gpu: SharedGpu | None = None, cheap_images: bool = False) -> None:
        self.hub = hub
        self.queue = queue
        self.faults = faults
        self.folders = folders
        self.classes = classes
        self.step_ms = step_ms
        self.previews = previews
        self.cheap_images = cheap_images
        self.cache_keeps_all = cache_keeps_all
        self.gpu = gpu
        self._outputs: dict[str, tuple[Any, ...]] = {}
        self._ui: dict[str, dict[str, Any]] = {}
        self._interrupt = False
        self.client_id: str | None = None
        self.last_node_id: str | None = None

    # --- control -----------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._interrupt = True

    def check_interrupt(self) -> None:
        if self._interrupt:
            self._interrupt = False
            raise Interrupted("Processing interrupted")

    def free(self) -> None:
        self._outputs.clear()
        self._ui.clear()

    async def run_forever(self) -> None:
        while True:
            task_id, item = await self.queue.get()
            result, status = await self.execute(item)
            self.queue.task_done(task_id, result, status)
            if self.client_id is not None:
                self.hub.send("executing", {"node": None, "prompt_id": item.prompt_id},
                              self.client_id)

    # --- messages ----------------------------------------------------------------------------
    def _add_message(self, run: _Run, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        run.status_messages.append([event, data])
        if run.client_id is not None or broadcast:
            self.hub.send(event, data, run.client_id)

    def _send_progress_state(self, run: _Run) -> None:
        nodes = {
            node_id: {"value": state["value"], "max": state["max"], "state": state["state"],
                      "node_id": node_id, "prompt_id": run.prompt_id,
                      "display_node_id": node_id, "parent_node_id": None,
                      "real_node_id": node_id}
            for node_id, state in run.progress.items()
        }
        self.hub.send("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes},
                      run.client_id)

    def _set_progress(self, run: _Run, node_id: str, **state: Any) -> None:
        entry = run.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry.update(state)
        if entry["state"] == "finished":
            entry["value"] = entry["max"]
        self._send_progress_state(run)

    async def report_progress(self, run: _Run, node_id: str, value: int, total: int,
                              preview: bytes | None) -> None:
        self.check_interrupt()
        self._set_progress(run, node_id, state="running", value=value, max=total)
        sid = run.client_id
        wants_metadata = self.hub.supports_preview_metadata(sid)
        legacy = with_metadata = b""
        if preview is not None:
            legacy, with_metadata = messages.preview_frames(preview, {
                "node_id": node_id, "prompt_id": run.prompt_id, "display_node_id": node_id,
                "parent_node_id": None, "real_node_id": node_id})
            if wants_metadata:
                self.hub.send(messages.PREVIEW_IMAGE_WITH_METADATA, with_metadata, sid)
        self.hub.send("progress", {"value": value, "max": total, "prompt_id": run.prompt_id,
                                   "node": node_id}, sid)
        if preview is not None and not wants_metadata:
            self.hub.send(messages.PREVIEW_IMAGE, legacy, sid)
        await asyncio.sleep(0)

    # --- execution ---------------------------------------------------------------------------
    async def execute(self, item: QueueItem) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.faults.state.crash_on_prompt:
            os._exit(3)  # a ComfyUI that dies as it takes the next prompt
        self._interrupt = False
        run = _Run(item, item.extra_data.get("client_id"))
        self.client_id = run.client_id
        run.fail_injected = self.faults.take_failure()
        self._add_message(run, "execution_start", {"prompt_id": run.prompt_id}, False)

        prompt = item.prompt
        classes = self.classes()
        sigs = signatures(prompt)
        if not self.cache_keeps_all:  # the classic cache: only the previous prompt's nodes stay
            live = set(sigs.values())
            for cache in (self._outputs, self._ui):
                for key in [k for k in cache if k not in live]:
                    del cache[key]
        cached = [node_id for node_id in prompt if sigs[node_id] in self._outputs]
        self._add_message(run, "execution_cached",
                          {"nodes": cached, "prompt_id": run.prompt_id}, False)

        pending = ExecutionList(prompt, lambda n: sigs[n] in self._outputs,
                                lambda n: classes[prompt[n]["class_type"]].output_node)
        for output_id in item.outputs:
            pending.add_node(output_id)
        success = True
        while not pending.is_empty():
            node_id = pending.next_node()
            failure = await self._run_node(run, classes, sigs, node_id)
            if failure is not None:
                success = False
                self._report_failure(run, node_id, *failure)
                break
            pending.complete(node_id)
        if success:
            self._add_message(run, "execution_success", {"prompt_id": run.prompt_id}, False)

        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in prompt:
            ui = self._ui.get(sigs[node_id])
            if ui is not None:
                outputs[node_id] = ui["output"]
                meta[node_id] = ui["meta"]
        self.last_node_id = None
        status = {"status_str": "success" if success else "error", "completed": success,
                  "messages": run.status_messages}
        return {"outputs": outputs, "meta": meta}, status

    def _resolve_inputs(self, node: dict[str, Any], sigs: Mapping[str, str]) -> dict[str, Any]:
        resolved = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                resolved[name] = self._outputs[sigs[value[0]]][value[1]]
            else:
                resolved[name] = value
        return resolved

    async def _run_node(self, run: _Run, classes: Mapping[str, NodeClass],
                        sigs: Mapping[str, str], node_id: str,
                        ) -> tuple[BaseException, dict[str, Any]] | None:
        sig = sigs[node_id]
        node = run.item.prompt[node_id]
        if sig in self._outputs:
            if run.client_id is not None:
                ui = self._ui.get(sig) or {}
                self.hub.send("executed", {"node": node_id, "display_node": node_id,
                                           "output": ui.get("output"),
                                           "prompt_id": run.prompt_id}, run.client_id)
            self._set_progress(run, node_id, state="finished")
            return None

        self._set_progress(run, node_id, state="running", value=0.0, max=1.0)
        inputs = self._resolve_inputs(node, sigs)
        if run.client_id is not None:
            self.last_node_id = node_id
            self.hub.send("executing", {"node": node_id, "display_node": node_id,
                                        "prompt_id": run.prompt_id}, run.client_id)
        try:
            await asyncio.sleep(0)
            self.check_interrupt()
            if run.fail_injected:
                run.fail_injected = False
                raise RuntimeError(self.faults.failure_message)
            behaviour = BEHAVIOURS.get(node["class_type"], not_simulated)
            context = _Context(self, run, node_id, classes[node["class_type"]])
            output: NodeOutput = await behaviour(context, inputs)
        except Exception as exc:  # any node error becomes an execution_error, as in ComfyUI
            return exc, inputs
        if output.ui is not None:
            self._ui[sig] = {"meta": {"node_id": node_id, "display_node": node_id,
                                      "parent_node": None, "real_node_id": node_id},
                             "output": output.ui}
            if run.client_id is not None:
                self.hub.send("executed", {"node": node_id, "display_node": node_id,
                                           "output": output.ui, "prompt_id": run.prompt_id},
                              run.client_id)
        self._outputs[sig] = output.values
        self._set_progress(run, node_id, state="finished")
        run.executed.append(node_id)
        return None

    def _report_failure(self, run: _Run, node_id: str,
                        exc: BaseException, inputs: dict[str, Any]) -> None:
        class_type = run.item.prompt[node_id]["class_type"]
        base = {"prompt_id": run.prompt_id, "node_id": node_id, "node_type": class_type,
                "executed": list(run.executed)}
        if isinstance(exc, Interrupted):
            self._add_message(run, "execution_interrupted", base, True)
            return
        exc_type = type(exc).__qualname__
        if type(exc).__module__ != "builtins":
            exc_type = f"{type(exc).__module__}.{exc_type}"
        module = self.classes()[class_type].spec.get("python_module", "nodes")
        self._add_message(run, "execution_error", {
            **base,
            "exception_message": f"{exc}\n",
            "exception_type": exc_type,
            "traceback": _traceback(module.replace(".", "/") + ".py", f"raise {type(exc).__name__}"),
            "current_inputs": {name: [_format_input(v)] for name, v in inputs.items()},
            "current_outputs": list(run.item.prompt),  # every node of the prompt, as ComfyUI sends
        }, False)
