"""Input files in a graph: `upload:<id>` references, found and swapped for node file names.

Pure. A request names an uploaded image by reference (a template's image parameter, or a
LoadImage input of workflow_json); the record keeps the reference, and each attempt uploads
the file to its node and submits a copy of the graph with the node's name for it, so a task
that fails over uploads again to its new node.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REF_PREFIX = "upload:"
_REF = re.compile(r"^upload:([0-9a-f]{32})$")
NODE_SUBFOLDER = "comfy-service"  # where on a node our inputs go (its input/ folder)


@dataclass(frozen=True)
class InputRef:
    node_id: str
    input_name: str
    upload_id: str


def upload_id_of(value: Any) -> str | None:
    match = _REF.match(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def looks_like_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX)


def find_refs(graph: Mapping[str, Any]) -> list[InputRef]:
    refs = []
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            upload_id = upload_id_of(value)
            if upload_id is not None:
                refs.append(InputRef(str(node_id), str(name), upload_id))
    return refs


def node_file_name(task_id: str, ordinal: int, ext: str) -> str:
    """The file's name on the node: from the task, so two tasks never share a name."""
    return f"{task_id}-{ordinal}{ext}"


def with_node_files(graph: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `graph` where each reference reads the node's file (`names`: upload id ->
    the value LoadImage takes, `subfolder/name`)."""
    copied: dict[str, Any] = copy.deepcopy(dict(graph))
    for ref in find_refs(graph):
        copied[ref.node_id]["inputs"][ref.input_name] = names[ref.upload_id]
    return copied
