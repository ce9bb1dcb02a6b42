"""Where a task's output files live on disk: written by the worker, served by the gateway."""

from __future__ import annotations

import pathlib


def output_path(output_dir: pathlib.Path, task_id: str, index: int, filename: str) -> pathlib.Path:
    """Where output `index` of a task lives: derived from the task, so a retry overwrites it."""
    suffix = pathlib.Path(filename).suffix.lower() or ".bin"
    return output_dir / task_id / f"{index}{suffix}"
