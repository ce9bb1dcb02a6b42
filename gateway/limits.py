"""Bounds on what a request may ask of the gateway before any recursive code sees it (pure).

JSON nesting and workflow graphs are walked iteratively here, so a body nested 100,000 deep, a
graph whose links form a cycle, or a chain of thousands of nodes is refused with a 4xx naming
the problem instead of exhausting Python's recursion limit in a parser, in ComfyUI's
validation rules or in a JSON encoder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from comfy_service.errors import InvalidJson, ValidationFailed

# A generate body is a few levels deep (body > workflow_json > node > inputs > value); 64 leaves
# room for any real parameter while every recursive consumer stays far from its limit.
MAX_JSON_DEPTH = 64
# ComfyUI workflows in use have tens to a few hundred nodes.
MAX_GRAPH_NODES = 1000
# The longest chain of links: ComfyUI's validation (ported in comfy_service/comfyui) follows
# links recursively, one frame per node.
MAX_GRAPH_DEPTH = 200


def parse_json(raw: bytes) -> Any:
    """The body as JSON, refusing invalid or too deeply nested documents (400 invalid_json)."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels",
                          {"max_depth": MAX_JSON_DEPTH}) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels",
                          {"max_depth": MAX_JSON_DEPTH})
    return value


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a decoded JSON value (a scalar is depth 0)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _links(node: Any) -> list[str]:
    """The node ids a node's inputs link to ([node_id, slot] pairs), as ComfyUI reads them."""
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    return [str(value[0]) for value in inputs.values()
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int)]


def check_graph_shape(graph: Mapping[str, Any]) -> None:
    """Refuse (422) a graph too large, with a cycle, or with a chain longer than ComfyUI's
    recursive validation can follow. Links to missing nodes are left to that validation."""
    field = "workflow_json"
    if len(graph) > MAX_GRAPH_NODES:
        raise ValidationFailed(f"workflow_json has {len(graph)} nodes; at most "
                               f"{MAX_GRAPH_NODES} are accepted",
                               {"fields": [{"field": field, "message": "too many nodes"}],
                                "max_nodes": MAX_GRAPH_NODES})
    upstream = {str(node_id): [link for link in _links(node) if link in graph]
                for node_id, node in graph.items()}
    cycle = find_cycle(upstream)
    if cycle:
        raise ValidationFailed(
            "workflow_json's links form a cycle: " + " -> ".join([*cycle, cycle[0]]),
            {"fields": [{"field": field, "message": "links form a cycle"}], "cycle": cycle})
    depth = longest_chain(upstream)
    if depth > MAX_GRAPH_DEPTH:
        raise ValidationFailed(f"workflow_json chains {depth} nodes through its links; at most "
                               f"{MAX_GRAPH_DEPTH} are accepted",
                               {"fields": [{"field": field, "message": "chain too long"}],
                                "max_depth": MAX_GRAPH_DEPTH})


def find_cycle(upstream: Mapping[str, list[str]]) -> list[str]:
    """The nodes of one cycle in the link graph, in link order; [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(upstream):
        if state.get(start):
            continue
        path: list[str] = [start]
        pending: list[list[str]] = [sorted(upstream[start], reverse=True)]
        state[start] = 1
        while path:
            if not pending[-1]:
                state[path.pop()] = 2
                pending.pop()
                continue
            nxt = pending[-1].pop()
            if state.get(nxt) == 1:
                return path[path.index(nxt):]
            if state.get(nxt) is None:
                state[nxt] = 1
                path.append(nxt)
                pending.append(sorted(upstream.get(nxt, []), reverse=True))
    return []


def longest_chain(upstream: Mapping[str, list[str]]) -> int:
    """Nodes on the longest chain of links in an acyclic link graph."""
    length: dict[str, int] = {}
    for start in upstream:
        stack = [start]
        while stack:
            node = stack[-1]
            if node in length:
                stack.pop()
                continue
            todo = [up for up in upstream.get(node, []) if up not in length]
            if todo:
                stack.extend(todo)
                continue
            length[node] = 1 + max((length[up] for up in upstream.get(node, [])), default=0)
            stack.pop()
    return max(length.values(), default=0)
