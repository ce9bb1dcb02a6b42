"""A task's output files: which files of a prompt's history are outputs, and their store keys.

Pure. Keys derive from the task and the output's place, so a retried task overwrites its own
objects and never adds a second set; all of a task's objects share one prefix, which retention
deletes in one sweep.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from typing import Any


def task_prefix(task_id: str) -> str:
    return f"outputs/{task_id}/"


def output_key(task_id: str, index: int, filename: str) -> str:
    suffix = pathlib.PurePosixPath(filename).suffix.lower() or ".bin"
    return f"{task_prefix(task_id)}{index}{suffix}"


def output_files(outputs: Mapping[str, Any], node_order: Iterable[str]) -> list[dict[str, Any]]:
    """Every file a prompt saved, in graph order: ComfyUI lists them per node under the kind
    of file (`images`, which also holds animated WebP/PNG, WEBM and SaveVideo files; `gifs`
    from video-combine nodes; `audio`; `3d`...), each {filename, subfolder, type}. Only
    type "output" is kept: "temp" files are previews (PreviewImage) that ComfyUI deletes."""
    found = []
    for node_id in node_order:
        node_outputs = outputs.get(node_id)
        if not isinstance(node_outputs, Mapping):
            continue
        for kind, items in node_outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if (isinstance(item, Mapping) and isinstance(item.get("filename"), str)
                        and item.get("type", "output") == "output"):
                    found.append({"node_id": node_id, "filename": item["filename"],
                                  "subfolder": str(item.get("subfolder", "")),
                                  "type": "output", "group": kind})
    return found
