"""API_WORKERS > 1: when uvicorn's supervisor is SIGKILLed its worker processes stop too, so the
port is free for the gateway that replaces it (found by the fault drill)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys

import httpx

from tests.support.processes import ManagedProcess, RedisProcess, free_port, wait_until


def _children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_workers_of_a_killed_gateway_supervisor_stop_and_free_the_port(
        tmp_path: pathlib.Path) -> None:
    redis = RedisProcess(tmp_path / "redis")
    port = free_port()
    env = {"REDIS_URL": redis.url, "API_PORT": str(port), "API_WORKERS": "2",
           "LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "comfy_service.cli", "gateway"]
    gateway = ManagedProcess("gateway", argv, tmp_path / "gateway.log", env=env)
    replacement: ManagedProcess | None = None
    workers: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 30, "the gateway",
                   transient=lambda exc: isinstance(exc, httpx.HTTPError))
        workers = wait_until(lambda: len(c := [p for p in _children(gateway.proc.pid)
                                               if _alive(p)]) >= 2 and c, 30, "two workers")
        # When the supervisor is SIGKILLed
        os.kill(gateway.proc.pid, signal.SIGKILL)
        gateway.proc.wait(10)
        # Then its workers notice and stop, and the port is free again
        wait_until(lambda: not any(_alive(p) for p in workers), 30, "the orphaned workers to stop")
        wait_until(lambda: _port_free(port), 10, "the port to be free")
        # And a new gateway serves on the same port
        replacement = ManagedProcess("gateway2", argv, tmp_path / "gateway2.log", env=env)
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 30, "the new gateway",
                   transient=lambda exc: isinstance(exc, httpx.HTTPError))
        assert "gateway.orphaned" in (tmp_path / "gateway.log").read_text()
    finally:
        for proc in (replacement, gateway):
            if proc is not None:
                proc.stop()
        for pid in workers:  # a failed run must not leave orphans holding a port
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        redis.stop()
