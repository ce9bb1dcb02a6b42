"""Real processes for tests: simulated ComfyUI nodes and redis-server, on free loopback ports."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import httpx

T = TypeVar("T")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T | None], timeout: float,
               what: str | Callable[[], str] = "a condition", interval: float = 0.02,
               transient: Callable[[Exception], bool] = lambda exc: False) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` at the deadline.

    An exception from `condition` propagates unless `transient(exc)` says it only means
    "not yet"; the last such exception is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = condition()
        except Exception as exc:
            if not transient(exc):
                raise
            last, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            if last is not None:
                text = f"{text} (last error: {last!r})"
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {text}") from last
        time.sleep(interval)


class ManagedProcess:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: pathlib.Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class SimNodeProcess(ManagedProcess):
    """`python -m comfyui_sim` on a free port, with its own base directory."""

    def __init__(self, base_dir: pathlib.Path, *extra_args: str, port: int | None = None,
                 step_ms: float = 50) -> None:
        self.port = port or free_port()
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "comfyui_sim", "--port", str(self.port),
                "--base-dir", str(base_dir), "--step-ms", str(step_ms), *extra_args]
        super().__init__(f"sim:{self.port}", argv, base_dir / "sim.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        try:
            wait_until(self._answers, 20, f"comfyui_sim on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"comfyui_sim did not start:\n{self.log_tail()}") from None

    def _answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"comfyui_sim exited:\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/queue", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run `make test`, which installs it")
    return binary


class RedisProcess(ManagedProcess):
    """A private redis-server on loopback with its data in a temp dir."""

    def __init__(self, data_dir: pathlib.Path, appendonly: bool = False) -> None:
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(data_dir), "--save", "", "--appendonly",
                "yes" if appendonly else "no", "--protected-mode", "yes"]
        super().__init__(f"redis:{self.port}", argv, data_dir / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_until(self._answers, 20, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"redis-server exited:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
