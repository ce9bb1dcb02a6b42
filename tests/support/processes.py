"""Real processes for tests: simulated ComfyUI nodes and redis-server, on free loopback ports."""

from __future__ import annotations

import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import httpx

from comfy_service.polling import wait_until

T = TypeVar("T")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Watched(Protocol):
    def alive(self) -> bool: ...

    def log_tail(self, lines: int = ...) -> str: ...


def required_binary(lookup: Callable[[str], str], name: str,
                    missing: type[Exception]) -> str:
    """`lookup(name)` for a test: a missing binary fails it (never skips), with the lookup's
    own words on how to get the binary."""
    import pytest
    try:
        return lookup(name)
    except missing as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


def serving(proc: Watched, url: str, what: str) -> bool:
    """Readiness of a process we started: its URL answers 200; its death fails at once."""
    if not proc.alive():
        raise RuntimeError(f"{what} exited:\n{proc.log_tail()}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


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


def sim_argv(base_dir: pathlib.Path, step_ms: float, *extra_args: str) -> list[str]:
    base_dir.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "comfyui_sim", "--base-dir", str(base_dir),
            "--step-ms", str(step_ms), *extra_args]


class SimNodeProcess(ManagedProcess):
    """`python -m comfyui_sim` on a free port, with its own base directory."""

    def __init__(self, base_dir: pathlib.Path, *extra_args: str, port: int | None = None,
                 step_ms: float = 50) -> None:
        self.port = port or free_port()
        self.base_dir = base_dir
        argv = sim_argv(base_dir, step_ms, "--port", str(self.port), *extra_args)
        super().__init__(f"sim:{self.port}", argv, base_dir / "sim.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        try:
            wait_until(self._answers, 20, f"comfyui_sim on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"comfyui_sim did not start:\n{self.log_tail()}") from None

    def _answers(self) -> bool:
        return serving(self, f"{self.url}/queue", "comfyui_sim")


class FarmProcess(ManagedProcess):
    """`python -m comfyui_sim --nodes N`: N simulated nodes in one process on free ports (read
    from its --ports-file), node i's files under base_dir/i; cheap images unless told."""

    def __init__(self, base_dir: pathlib.Path, nodes: int, *extra_args: str,
                 step_ms: float = 50, cheap_images: bool = True,
                 start_timeout: float = 120) -> None:
        self.base_dir = base_dir
        ports_file = base_dir / "ports"
        ports_file.unlink(missing_ok=True)
        argv = sim_argv(base_dir, step_ms, "--nodes", str(nodes), "--ports-file",
                        str(ports_file), *(["--cheap-images"] if cheap_images else []),
                        *extra_args)
        super().__init__(f"farm:{nodes}", argv, base_dir / "farm.log")
        try:
            wait_until(lambda: self._listed(ports_file), start_timeout,
                       f"a farm of {nodes} simulated nodes")
        except BaseException:
            self.stop()
            raise
        self.ports = [int(line) for line in ports_file.read_text().split()]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]

    def _listed(self, ports_file: pathlib.Path) -> bool:
        if not self.alive():
            raise RuntimeError(f"the farm exited:\n{self.log_tail()}")
        return ports_file.exists()


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


def read_until_up(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    """The lines `comfy-service up` prints until it says it is up (fails if it exits first)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        line = lines.get(timeout=timeout)
        if line is None:
            raise AssertionError("`up` exited before it was ready:\n" + "\n".join(seen))
        seen.append(line)
        if "Ctrl-C stops everything" in line:
            return seen
