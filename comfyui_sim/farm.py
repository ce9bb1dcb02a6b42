"""A node farm: many simulated ComfyUI nodes in one process and one event loop, one port each.

Each node is a whole `create_app` node (its own queue, executor, sockets and files) served by its
own uvicorn Server on its own listening socket, so the protocol code is the single node's. The
farm owns the signals (uvicorn's per-server handlers would chain through each other) and ticks
each server once a second instead of ten times: at 1,000 nodes the ticks alone would cost a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator

import uvicorn

from comfyui_sim.server import create_app
from comfyui_sim.settings import FarmSettings, SimSettings

TICK_S = 1.0  # how often a node's server refreshes its Date header and looks for the stop
START_POLL_S = 0.05


def uvicorn_config(settings: SimSettings) -> uvicorn.Config:
    """How one node is served, alone or in a farm."""
    return uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                          log_level=settings.log_level.lower(), server_header=False,
                          ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=5)


class FarmServer(uvicorn.Server):
    """One node's server inside a farm: no signal handlers of its own, a slow tick."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        while not await self.on_tick(0):  # tick 0 refreshes the Date header every time
            await asyncio.sleep(TICK_S)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _write_ports(path: os.PathLike[str] | str, ports: list[int]) -> None:
    """All at once (written aside, then renamed), so a reader never sees part of the list."""
    aside = f"{os.fspath(path)}.tmp"
    with open(aside, "w") as out:
        out.write("".join(f"{port}\n" for port in ports))
    os.replace(aside, path)


async def serve_farm(farm: FarmSettings) -> None:
    sockets = [_listen(farm.node.host, farm.port_of(i)) for i in range(farm.nodes)]
    ports = [int(sock.getsockname()[1]) for sock in sockets]
    servers = [FarmServer(uvicorn_config(farm.node_settings(i, port)))
               for i, port in enumerate(ports)]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve(sockets=[sock]), name=f"node{i}")
             for i, (server, sock) in enumerate(zip(servers, sockets, strict=True))]
    try:
        while not all(server.started for server in servers):
            done, _ = await asyncio.wait(tasks, timeout=START_POLL_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                stop()
                raise RuntimeError(f"a node of the farm stopped while starting: {done.pop()}")
        if farm.ports_file is not None:
            _write_ports(farm.ports_file, ports)
        where = (f"ports {ports[0]}..{ports[-1]}" if farm.base_port else "free ports")
        print(f"comfyui-sim farm: {farm.nodes} nodes serving on {where}"
              + (f", listed in {farm.ports_file}" if farm.ports_file else ""), flush=True)
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
