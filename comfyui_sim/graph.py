"""Graph logic of a ComfyUI prompt: cache signatures and the order nodes execute in.

Pure. Reproduces ComfyUI 0.3.64's observable behaviour: a node is reused from the cache when its
class and inputs (recursively, through its ancestors) are unchanged, whatever its node id; the
execution order is the "UX friendly" topological dissolve (txt2img ran 4, 5, 7, 6, 3, 8, 9).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int))


def signatures(prompt: Mapping[str, Any]) -> dict[str, str]:
    """Content hash of every node: class, constant inputs and the signatures it links from."""
    memo: dict[str, str] = {}

    def signature(node_id: str) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        parts: list[Any] = [node["class_type"]]
        for name in sorted(node.get("inputs", {})):
            value = node["inputs"][name]
            if is_link(value) and value[0] in prompt:
                parts.append([name, "link", signature(value[0]), value[1]])
            else:
                parts.append([name, "value", value])
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
        memo[node_id] = digest.hexdigest()
        return memo[node_id]

    for node_id in prompt:
        signature(node_id)
    return memo


class ExecutionList:
    """Nodes still to run for the requested outputs, skipping those whose result is cached."""

    def __init__(self, prompt: Mapping[str, Any], is_cached: Callable[[str], bool],
                 is_output: Callable[[str], bool]) -> None:
        self._prompt = prompt
        self._is_cached = is_cached
        self._is_output = is_output
        self._pending: dict[str, bool] = {}
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, bool]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = True
            self._block_count[current] = 0
            self._blocking[current] = {}
            for value in self._prompt[current].get("inputs", {}).values():
                if is_link(value) and not self._is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            if target not in self._blocking[source]:
                self._blocking[source][target] = True
                self._block_count[target] += 1

    def is_empty(self) -> bool:
        return not self._pending

    def next_node(self) -> str:
        """The node to run next: outputs first, then what unblocks an output soonest."""
        ready = [n for n in self._pending if self._block_count[n] == 0]
        if not ready:
            raise ValueError("Dependency cycle detected")
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self._blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self._blocking[node_id]:
                if any(self._is_output(b) for b in self._blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self._pending[node_id]
        for blocked in self._blocking.pop(node_id):
            self._block_count[blocked] -= 1
