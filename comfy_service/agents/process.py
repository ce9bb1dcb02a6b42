"""A Consul or Nomad agent as a child process: started, polled until ready, stopped, reaped.

Used by `comfy-service up` (MESH=consul, MESH=nomad) and by the tests' fixtures alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from comfy_service.polling import wait_until

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 20.0

T = TypeVar("T")


class AgentStartError(RuntimeError):
    """An agent exited or did not become ready in time; the message has its log tail."""


def get_json(url: str, timeout: float = 2.0) -> Any:
    """The decoded JSON of a 200 answer, else None (the agent is not ready yet)."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def processes_under(root: Path) -> list[int]:
    """PIDs (other than ours) whose cwd or executable lives under ``root``, or whose
    command line mentions it (e.g. Nomad's ``executor`` helpers, which run in their
    own sessions and would otherwise outlive a killed agent)."""
    found: list[int] = []
    prefix = str(root.resolve()) + os.sep
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            targets = [os.readlink(entry / "cwd"), os.readlink(entry / "exe")]
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any((t + os.sep).startswith(prefix) for t in targets) or prefix in cmdline:
            found.append(int(entry.name))
    return found


class Agent:
    """A long-running agent subprocess with its log in ``workdir``."""

    name = "agent"
    stop_signal = signal.SIGINT
    start_timeout = 60.0

    host = LOOPBACK
    http_port: int  # set by each agent's __init__ (a free loopback port)

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def http_addr(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- subclass hooks
    def argv(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Reap strays (e.g. task processes) once the agent itself has exited."""

    # -- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} agent already running")
        argv = self.argv()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n==== starting: {' '.join(argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # own process group: teardown can reap helpers
            env=self._env(),
        )
        try:
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.stop()
            raise

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Never let the operator's environment redirect the agent or its CLI.
        for key in list(env):
            if key.startswith(("CONSUL_", "NOMAD_")):
                del env[key]
        return env

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AgentStartError(
                    f"{self.name} agent exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            return self.is_ready()

        try:
            wait_until(ready, timeout, f"{self.name} agent ready", interval=0.2,
                       transient=lambda exc: not isinstance(exc, AgentStartError))
        except TimeoutError as exc:
            raise AgentStartError(
                f"{self.name} agent not ready within {timeout:.0f}s ({exc}); "
                f"log {self.log_path}:\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Signal the agent, wait up to ``timeout`` s, then SIGKILL its process group."""
        proc, code = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            code = proc.returncode
            # Helpers left in the agent's process group (plugins, executors).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._after_stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self) -> None:
        """Stop the agent and start it again (ready) on the same ports and directories.

        Dev-mode agents come back empty; a ``ConsulAgent(persistent=True)`` keeps
        its catalog and KV."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def short_tmpdir(prefix: str) -> Path:
    # Nomad puts unix sockets under data_dir/alloc/<uuid>/<task>/...; keep the
    # prefix short so they stay under the 108-byte sun_path limit.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + os.sep
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    return [p for p in points if (p + os.sep).startswith(prefix)]


def remove_tree(path: Path) -> None:
    # Nomad (as root) mounts a tmpfs on each task's secrets dir; a client that was
    # killed cannot unmount it, and rmtree would stop there.
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


AgentT = TypeVar("AgentT", bound=Agent)


@contextlib.contextmanager
def managed(agent: AgentT, keep_dirs: bool = False) -> Iterator[AgentT]:
    """Start ``agent``; at exit stop it and remove its workdir (unless AGENTS_KEEP_DIRS)."""
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        if not keep_dirs:
            remove_tree(agent.workdir)


