"""Real Consul and Nomad agents for tests.

The agents run as subprocesses bound to 127.0.0.1 on free ports with private
temporary data directories, and the fixtures wait (polling with a deadline) until
they are usable:

* ``consul_agent`` (session scope): ``consul agent -dev``; ready once a leader is
  elected and the agent's own node is in the catalog.
* ``nomad_agent`` (session scope): ``nomad agent -dev`` (server + client) with the
  ``raw_exec`` driver enabled and pointed at ``consul_agent``; ready once a node is
  ``ready`` with a healthy ``raw_exec`` driver.
* ``consul_agent_factory`` / ``nomad_agent_factory`` (function scope): start extra,
  private agents (e.g. one that a test restarts or breaks), all stopped at teardown.

Binaries are resolved like ``tools/agents/build.sh`` does: ``$CONSUL_BIN`` /
``$NOMAD_BIN``, then ``consul`` / ``nomad`` on ``PATH``, then
``${XDG_CACHE_HOME:-~/.cache}/comfy-service/bin/<name>-<version>`` for the version
pinned in ``tools/agents/versions.env``. A missing binary fails the test and says to
run ``make agents``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.processes import wait_until as _wait_until

__all__ = [
    "AgentBinaryNotFound",
    "AgentStartError",
    "ConsulAgent",
    "NomadAgent",
    "agent_binary",
    "consul_agent",
    "consul_agent_factory",
    "consul_bin",
    "free_ports",
    "http_json",
    "nomad_agent",
    "nomad_agent_factory",
    "nomad_bin",
    "processes_under",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO_ROOT / "tools" / "agents" / "versions.env"
LOOPBACK = "127.0.0.1"

# Deadlines. Cold starts on a loaded 2-core CI machine are the slow case.
CONSUL_START_TIMEOUT = float(os.environ.get("CONSUL_START_TIMEOUT", "60"))
NOMAD_START_TIMEOUT = float(os.environ.get("NOMAD_START_TIMEOUT", "90"))
STOP_TIMEOUT = 20.0

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


class AgentBinaryNotFound(RuntimeError):
    """No consul/nomad binary could be located."""


class AgentStartError(RuntimeError):
    """An agent exited or did not become ready in time; the message has its log tail."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll ``predicate`` until truthy; exceptions mean "not yet", except ``AgentStartError``
    (the agent died: waiting longer cannot help)."""
    return _wait_until(predicate, timeout, message, interval,
                       transient=lambda exc: not isinstance(exc, AgentStartError))


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any, dict[str, str]]:
    """Tiny stdlib HTTP/JSON client: returns (status, decoded body or None, headers)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status, headers = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
            status, headers = exc.code, dict(exc.headers)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    return status, decoded, headers


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


def _pinned_versions() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("\"'")
    return values


def _cache_bin_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfy-service" / "bin"


def agent_binary(name: str) -> str:
    """Path of the ``consul``/``nomad`` binary, resolved like tools/agents/build.sh."""
    var = f"{name.upper()}_BIN"
    from_env = os.environ.get(var)
    if from_env:
        if os.path.isfile(from_env) and os.access(from_env, os.X_OK):
            return from_env
        raise AgentBinaryNotFound(f"${var}={from_env} is not an executable file")
    on_path = shutil.which(name)
    if on_path:
        return on_path
    version = _pinned_versions()[f"{name.upper()}_VERSION"]
    cached = _cache_bin_dir() / f"{name}-{version}"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    raise AgentBinaryNotFound(
        f"no `{name}` binary: ${var} is unset, none on PATH and {cached} does not exist. "
        "Run `make agents` (bash tools/agents/build.sh) to build the pinned consul/nomad."
    )


def _require_binary(name: str) -> str:
    """``agent_binary`` for fixtures: a missing binary fails (never skips) the test."""
    try:
        return agent_binary(name)
    except AgentBinaryNotFound as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


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


# --------------------------------------------------------------------------- agents


class _Agent:
    """A long-running agent subprocess with its log in ``workdir``."""

    name = "agent"
    stop_signal = signal.SIGINT
    start_timeout = 60.0

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
            wait_until(ready, timeout, interval=0.2, message=f"{self.name} agent ready")
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


class ConsulAgent(_Agent):
    """``consul agent -dev`` on free loopback ports.

    ``persistent=True`` runs a single-node server with its raft data in ``workdir``
    instead of dev mode's in-memory state, so the catalog survives ``restart()``.
    """

    name = "consul"
    stop_signal = signal.SIGINT  # graceful leave
    start_timeout = CONSUL_START_TIMEOUT

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        persistent: bool = False,
        node_name: str = "comfy-test-consul",
        extra_hcl: str = "",
    ) -> None:
        super().__init__(binary, workdir)
        self.persistent = persistent
        self.node_name = node_name
        self.extra_hcl = extra_hcl
        (
            self.http_port,
            self.dns_port,
            self.serf_lan_port,
            self.serf_wan_port,
            self.server_port,
        ) = free_ports(5)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "consul.hcl"

    host = LOOPBACK

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def http_addr(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    def config_hcl(self) -> str:
        return f"""
node_name            = "{self.node_name}"
datacenter           = "dc1"
bind_addr            = "{LOOPBACK}"
client_addr          = "{LOOPBACK}"
advertise_addr       = "{LOOPBACK}"
disable_update_check = true
log_level            = "INFO"
ports {{
  http     = {self.http_port}
  https    = -1
  dns      = {self.dns_port}
  serf_lan = {self.serf_lan_port}
  serf_wan = {self.serf_wan_port}
  server   = {self.server_port}
  grpc     = -1
  grpc_tls = -1
}}
performance {{
  raft_multiplier = 1
}}
{self.extra_hcl}
"""

    def argv(self) -> list[str]:
        self.config_path.write_text(self.config_hcl())
        argv = [self.binary, "agent", "-config-file", str(self.config_path)]
        if self.persistent:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["-server", "-bootstrap-expect", "1", "-data-dir", str(self.data_dir)]
        else:
            argv += ["-dev"]
        return argv + ["-bind", LOOPBACK, "-client", LOOPBACK]

    def is_ready(self) -> bool:
        status, leader, _ = http_json("GET", f"{self.url}/v1/status/leader", timeout=2)
        if status != 200 or not leader:
            return False
        status, nodes, _ = http_json("GET", f"{self.url}/v1/catalog/nodes", timeout=2)
        return status == 200 and any(n.get("Node") == self.node_name for n in nodes or [])


DEFAULT_CLIENT_OPTIONS = {
    # The cloud fingerprinters probe 169.254.169.254 (never a target here), and
    # env_aws fails the whole client when AWS_CA_BUNDLE is set: "failed to setup
    # IMDS client: unable to add custom RootCAs HTTPClient, has no
    # WithTransportOptions, *http.Client".
    "fingerprint.denylist": "env_aws,env_gce,env_azure,env_digitalocean",
    # Only raw_exec is used by tests; skip fingerprinting docker/java/qemu/exec.
    "driver.denylist": "docker,java,qemu,exec",
}


class NomadAgent(_Agent):
    """``nomad agent -dev`` (server + client, raw_exec enabled) on free loopback ports.

    Dev mode matters beyond convenience: on shutdown a dev client destroys its
    allocations, so task processes do not outlive the agent. ``client=False`` runs a
    single-node server only (job validation, planning, registration without
    placement). ``consul_http_addr=None`` points Nomad's Consul integration at a
    closed port.
    """

    name = "nomad"
    stop_signal = signal.SIGINT
    start_timeout = NOMAD_START_TIMEOUT

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        consul_http_addr: str | None = None,
        node_name: str = "comfy-test-nomad",
        client: bool = True,
        client_options: dict[str, str] | None = None,
        extra_hcl: str = "",
    ) -> None:
        super().__init__(binary, workdir)
        self.consul_http_addr = consul_http_addr
        self.node_name = node_name
        self.client = client
        self.client_options = {**DEFAULT_CLIENT_OPTIONS, **(client_options or {})}
        self.extra_hcl = extra_hcl
        self.http_port, self.rpc_port, self.serf_port, self.closed_port = free_ports(4)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "nomad.hcl"
        self.node_id: str | None = None

    host = LOOPBACK

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    http_addr = addr

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def config_hcl(self) -> str:
        if self.consul_http_addr:
            consul = f"""
consul {{
  address = "{self.consul_http_addr}"
}}"""
        else:
            # Nomad always talks to some Consul (default 127.0.0.1:8500, where a
            # developer's `make up` may run one): point it at a closed port instead.
            consul = f"""
consul {{
  address          = "{LOOPBACK}:{self.closed_port}"
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}}"""
        options = "\n".join(f"    {json.dumps(k)} = {json.dumps(v)}" for k, v in self.client_options.items())
        client = (
            f"""
client {{
  enabled           = true
  network_interface = "lo"
  servers           = ["{LOOPBACK}:{self.rpc_port}"]
  options {{
{options}
  }}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}"""
            if self.client
            else f"""
client {{
  enabled = false
  options {{
{options}
  }}
}}"""
        )
        return f"""
name                 = "{self.node_name}"
region               = "global"
datacenter           = "dc1"
data_dir             = "{self.data_dir}"
bind_addr            = "{LOOPBACK}"
disable_update_check = true
log_level            = "INFO"
advertise {{
  http = "{LOOPBACK}"
  rpc  = "{LOOPBACK}"
  serf = "{LOOPBACK}"
}}
ports {{
  http = {self.http_port}
  rpc  = {self.rpc_port}
  serf = {self.serf_port}
}}
server {{
  enabled          = true
  bootstrap_expect = 1
}}
{client}
{consul}
{self.extra_hcl}
"""

    def argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_hcl())
        # -dev would force the client on; a server-only agent runs without it.
        dev = ["-dev"] if self.client else []
        return [self.binary, "agent", *dev, "-config", str(self.config_path)]

    def is_ready(self) -> bool:
        status, leader, _ = http_json("GET", f"{self.url}/v1/status/leader", timeout=2)
        if status != 200 or not leader:
            return False
        if not self.client:
            return True
        status, nodes, _ = http_json("GET", f"{self.url}/v1/nodes", timeout=2)
        if status != 200:
            return False
        for node in nodes or []:
            if node.get("Name") != self.node_name or node.get("Status") != "ready":
                continue
            raw_exec = (node.get("Drivers") or {}).get("raw_exec") or {}
            if raw_exec.get("Detected") and raw_exec.get("Healthy"):
                self.node_id = node["ID"]
                return True
        return False

    def _after_stop(self) -> None:
        # A dev client destroys its allocations on shutdown; after a SIGKILL it
        # cannot, so reap task processes still running from its alloc dirs.
        for pid in processes_under(self.data_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def cli(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``nomad <args>`` against this agent."""
        env = self._env()
        env["NOMAD_ADDR"] = self.url
        return subprocess.run(
            [self.binary, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )


def _short_tmpdir(prefix: str) -> Path:
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


def _remove_tree(path: Path) -> None:
    # Nomad (as root) mounts a tmpfs on each task's secrets dir; a client that was
    # killed cannot unmount it, and rmtree would stop there.
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


AgentT = TypeVar("AgentT", bound=_Agent)


@contextlib.contextmanager
def _managed(agent: AgentT) -> Iterator[AgentT]:
    """Start ``agent``; at exit stop it and remove its workdir (unless AGENTS_KEEP_DIRS)."""
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        if not os.environ.get("AGENTS_KEEP_DIRS"):
            _remove_tree(agent.workdir)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def consul_bin() -> str:
    """Path of the consul binary (fails the test with a `make agents` hint if absent)."""
    return _require_binary("consul")


@pytest.fixture(scope="session")
def nomad_bin() -> str:
    """Path of the nomad binary (fails the test with a `make agents` hint if absent)."""
    return _require_binary("nomad")


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgent]:
    """A Consul dev agent shared by the whole session (don't restart it: use the factory)."""
    binary = _require_binary("consul")
    with _managed(ConsulAgent(binary, _short_tmpdir("consul-"))) as agent:
        yield agent


@pytest.fixture(scope="session")
def nomad_agent(consul_agent: ConsulAgent) -> Iterator[NomadAgent]:
    """A Nomad dev agent (server + client with raw_exec) registered with ``consul_agent``."""
    binary = _require_binary("nomad")
    agent = NomadAgent(binary, _short_tmpdir("nomad-"), consul_http_addr=consul_agent.http_addr)
    with _managed(agent) as started:
        yield started


@pytest.fixture
def consul_agent_factory() -> Iterator[Callable[..., ConsulAgent]]:
    """``start(**kwargs) -> ConsulAgent``: private agents, stopped at teardown."""
    binary = _require_binary("consul")
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> ConsulAgent:
            agent = ConsulAgent(binary, _short_tmpdir("consul-"), **kwargs)
            return stack.enter_context(_managed(agent))

        yield start


@pytest.fixture
def nomad_agent_factory() -> Iterator[Callable[..., NomadAgent]]:
    """``start(**kwargs) -> NomadAgent``: private agents, stopped at teardown."""
    binary = _require_binary("nomad")
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> NomadAgent:
            agent = NomadAgent(binary, _short_tmpdir("nomad-"), **kwargs)
            return stack.enter_context(_managed(agent))

        yield start
