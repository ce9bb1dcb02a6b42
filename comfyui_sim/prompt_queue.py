"""ComfyUI's prompt queue and history: a heap ordered by `number`, one prompt running at a time."""

from __future__ import annotations

import asyncio
import copy
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAXIMUM_HISTORY_SIZE = 10000


@dataclass(order=True)
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        """The [number, prompt_id, prompt, extra_data, outputs_to_execute] shape of the API."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._heap: list[tuple[float, str, int, QueueItem]] = []
        self._arrivals = 0
        self._wakeup = asyncio.Event()
        self.running: dict[int, QueueItem] = {}
        self._next_task = 0
        self.history: dict[str, dict[str, Any]] = {}

    def put(self, item: QueueItem) -> None:
        self._arrivals += 1
        heapq.heappush(self._heap, (item.number, item.prompt_id, self._arrivals, item))
        self._on_change()
        self._wakeup.set()

    async def get(self) -> tuple[int, QueueItem]:
        while not self._heap:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = heapq.heappop(self._heap)[3]
        task_id = self._next_task
        self._next_task += 1
        self.running[task_id] = item
        self._on_change()
        return task_id, item

    def task_done(self, task_id: int, result: dict[str, Any], status: dict[str, Any]) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        stored = item.as_list()
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            stored[3].pop(key, None)
        # Assigning an existing key keeps its place: a reused prompt_id stays where it was first.
        self.history[item.prompt_id] = {"prompt": stored, "outputs": {}, "status": status}
        self.history[item.prompt_id].update(result)
        self._on_change()

    def remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def pending(self) -> list[QueueItem]:
        return [entry[3] for entry in self._heap]

    def wipe(self) -> None:
        self._heap = []
        self._on_change()

    def delete(self, prompt_id: str) -> bool:
        for index, entry in enumerate(self._heap):
            if entry[3].prompt_id == prompt_id:
                if len(self._heap) == 1:
                    self.wipe()  # the real queue announces this twice; keep the same count
                else:
                    self._heap.pop(index)
                    heapq.heapify(self._heap)
                self._on_change()
                return True
        return False

    def get_history(self, prompt_id: str | None = None,
                    max_items: int | None = None) -> dict[str, Any]:
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
        keys = list(self.history)
        if max_items is not None:
            keys = keys[max(0, len(keys) - max_items):][:max_items]
        return {key: self.history[key] for key in keys}
