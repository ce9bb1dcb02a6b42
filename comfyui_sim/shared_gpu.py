"""The virtual GPU that simulated nodes started with the same --gpu-id share: which of them are
sampling on it right now, across processes (the I/O half of comfyui_sim.packing).

Each node keeps a file `<gpu_dir>/<gpu_id>/<pid>-<token>.lock` and holds an exclusive flock on
it while it samples. Counting the samplers is trying a non-blocking shared flock on every file
there: one that refuses is held by a sampler. The kernel drops a process's flocks the moment it
dies, so a SIGKILLed node stops counting at once; a count removes its leftover file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import secrets
from collections.abc import Iterator

_GPU_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class SharedGpu:
    """This node's membership of one virtual GPU."""

    def __init__(self, gpu_dir: pathlib.Path, gpu_id: str) -> None:
        if not _GPU_ID.fullmatch(gpu_id) or gpu_id in (".", ".."):
            raise ValueError(f"gpu id {gpu_id!r}: use letters, digits and _.:- only")
        self.gpu_id = gpu_id
        self.folder = gpu_dir / gpu_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._depth = 0

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Count this node as sampling while inside (re-entrant)."""
        if self._fd is None:
            raise RuntimeError("the shared GPU is closed")
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits only while a count probes the file
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def count(self) -> int:
        """How many nodes are sampling on this GPU now, this one included if it is."""
        count = 1 if self._depth else 0
        with os.scandir(self.folder) as entries:
            names = [e.name for e in entries if e.name.endswith(".lock")]
        for name in names:
            if name != self.path.name and self._held(self.folder / name):
                count += 1
        return count

    @staticmethod
    def _held(path: pathlib.Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            pid = _pid_of(path.name)
            if pid is not None and not _alive(pid):
                path.unlink(missing_ok=True)  # a node that died without cleaning up
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
