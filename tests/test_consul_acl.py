"""Consul ACLs with the policies in consul/policies: a real agent with default deny, real sidecars.

One ACL-enabled dev agent, one simulated ComfyUI and one sidecar holding the sidecar token serve
the whole module (starting agents is the slow part); each test proves one thing about what a
token allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from actors.discovery import DiscoveredNode, watch_consul
from comfy_service import availability
from comfy_service.agents.process import managed, short_tmpdir
from comfy_service.polling import wait_until
from tests.agents_fixtures import KEEP_DIRS, ConsulAgent, consul_bin  # noqa: F401 (fixture)
from tests.support.processes import ROOT, ManagedProcess, SimNodeProcess

POLICIES = ROOT / "consul" / "policies"
SERVICE = "comfyui"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class AclConsul:
    agent: ConsulAgent
    management: str
    sidecar_token: str
    worker_token: str
    prometheus_token: str
    gateway_token: str

    def api(self, method: str, path: str, token: str | None, body: Any = None,
            **params: str) -> httpx.Response:
        headers = {"X-Consul-Token": token} if token else {}
        return httpx.request(method, f"{self.agent.url}{path}", json=body, params=params,
                             headers=headers, timeout=10)

    def passing(self) -> list[dict[str, Any]]:
        """The passing `comfyui` instances as an operator (management token) sees them."""
        response = self.api("GET", f"/v1/health/service/{SERVICE}", self.management,
                            passing="true")
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()
        return entries

    def agent_services(self) -> dict[str, Any]:
        response = self.api("GET", "/v1/agent/services", self.management)
        response.raise_for_status()
        services: dict[str, Any] = response.json()
        return services


@dataclass(frozen=True)
class SidecarRun:
    proc: ManagedProcess
    service_id: str


def _create_token(consul: ConsulAgent, management: str, policy: str) -> str:
    """Create the policy from its file in consul/policies and a token holding it."""
    headers = {"X-Consul-Token": management}
    rules = (POLICIES / f"{policy}.hcl").read_text()
    created = httpx.put(f"{consul.url}/v1/acl/policy", headers=headers, timeout=10,
                        json={"Name": policy, "Rules": rules})
    assert created.status_code == 200, created.text
    token = httpx.put(f"{consul.url}/v1/acl/token", headers=headers, timeout=10,
                      json={"Description": f"test {policy}", "Policies": [{"Name": policy}]})
    assert token.status_code == 200, token.text
    secret: str = token.json()["SecretID"]
    return secret


@pytest.fixture(scope="module")
def acl_consul(consul_bin: str) -> Iterator[AclConsul]:  # noqa: F811
    management = str(uuid.uuid4())
    hcl = f"""
acl {{
  enabled        = true
  default_policy = "deny"
  tokens {{
    initial_management = "{management}"
  }}
}}
"""
    agent = ConsulAgent(consul_bin, short_tmpdir("consul-acl-"), extra_hcl=hcl,
                        management_token=management)
    with managed(agent, KEEP_DIRS) as started:
        yield AclConsul(started, management,
                        sidecar_token=_create_token(started, management, "comfyui-sidecar"),
                        worker_token=_create_token(started, management, "comfy-worker"),
                        prometheus_token=_create_token(started, management, "prometheus"),
                        gateway_token=_create_token(started, management, "comfy-gateway"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("consul-acl")


@pytest.fixture(scope="module")
def sim(workdir: pathlib.Path) -> Iterator[SimNodeProcess]:
    node = SimNodeProcess(workdir / "sim", step_ms=20)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def start_sidecar(acl_consul: AclConsul, sim: SimNodeProcess,
                  workdir: pathlib.Path) -> Iterator[Any]:
    """``start(name, token) -> SidecarRun``: sidecar processes, stopped at module teardown."""
    started: list[ManagedProcess] = []

    def start(name: str, token: str | None) -> SidecarRun:
        readings = workdir / f"{name}-gpu.json"
        readings.write_text(json.dumps({
            "uuid": f"GPU-{name}", "name": "NVIDIA H100 80GB HBM3", "index": 0,
            "utilization_pct": 10.0, "memory_used_mb": 20000.0, "memory_total_mb": 81559.0,
            "temperature_c": 40.0, "power_w": 300.0}))
        proc = ManagedProcess(f"sidecar-{name}", [
            sys.executable, "-m", "comfy_service.cli", "sidecar"], workdir / f"{name}.log",
            # An empty CONSUL_HTTP_TOKEN hides any token in the environment of the test run.
            env={"COMFYUI_URL": sim.url, "CONSUL_HTTP_ADDR": acl_consul.agent.url,
                 "CONSUL_HTTP_TOKEN": token or "", "CONSUL_SERVICE_NAME": SERVICE,
                 "GPU_READINGS_FILE": str(readings), "NODE_HOSTNAME": name,
                 "SIDECAR_PROBE_INTERVAL_S": "0.5", "SIDECAR_TTL_S": "2",
                 "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"})
        started.append(proc)
        return SidecarRun(proc, f"comfyui-{name}-gpu0-{sim.port}")

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def registered(acl_consul: AclConsul, start_sidecar: Any) -> SidecarRun:
    """A sidecar with the sidecar token, its node passing in Consul."""
    run: SidecarRun = start_sidecar("allowed", acl_consul.sidecar_token)

    def passing() -> list[dict[str, Any]] | None:
        if not run.proc.alive():
            raise AssertionError(f"the sidecar exited:\n{run.proc.log_tail()}")
        entries = [e for e in acl_consul.passing() if e["Service"]["ID"] == run.service_id]
        return entries or None

    wait_until(passing, START_TIMEOUT, lambda: f"{run.service_id} passing; sidecar log:\n"
               f"{run.proc.log_tail()}")
    return run


def _json_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for text in log.splitlines():
        with contextlib.suppress(ValueError):
            decoded = json.loads(text)
            if isinstance(decoded, dict):
                lines.append(decoded)
    return lines


def _first_view(acl_consul: AclConsul, token: str | None, want: str | None,
                timeout: float = 30) -> list[DiscoveredNode]:
    """The nodes `watch_consul` reports: the first view with `want` in it, or (want=None) the
    very first view, within `timeout`."""

    async def watch() -> list[DiscoveredNode]:
        views: asyncio.Queue[list[DiscoveredNode]] = asyncio.Queue()

        async def listener(nodes: list[DiscoveredNode]) -> None:
            await views.put(nodes)

        async def until_wanted() -> list[DiscoveredNode]:
            while True:
                nodes = await views.get()
                if want is None or any(n.name == want for n in nodes):
                    return nodes

        task = asyncio.create_task(watch_consul(acl_consul.agent.url, SERVICE, token, listener))
        try:
            return await asyncio.wait_for(until_wanted(), timeout)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return asyncio.run(watch())


# --------------------------------------------------------------------------------- sidecar


@pytest.mark.parametrize("holds", ["no token", "the worker's token", "an unknown token"])
def test_a_sidecar_without_the_sidecar_token_is_refused_and_says_so(
        acl_consul: AclConsul, start_sidecar: Any, holds: str) -> None:
    name, token = {"no token": ("refused-none", None),
                   "the worker's token": ("refused-worker", acl_consul.worker_token),
                   "an unknown token": ("refused-unknown", str(uuid.uuid4()))}[holds]
    # Given a sidecar started with no token, a read-only token, or one Consul does not know
    run: SidecarRun = start_sidecar(name, token)
    # When Consul refuses its registration, Then it exits non-zero and logs the refusal
    wait_until(lambda: not run.proc.alive(), START_TIMEOUT,
               lambda: f"the refused sidecar to exit; log:\n{run.proc.log_tail()}")
    assert run.proc.proc.returncode not in (0, None)
    log = run.proc.log_path.read_text(errors="replace")
    assert any(line.get("level") == "error" and "ACLPermissionDenied" in json.dumps(line)
               for line in _json_lines(log)), log
    # And its node never appears in Consul
    assert run.service_id not in acl_consul.agent_services()
    assert all(e["Service"]["ID"] != run.service_id for e in acl_consul.passing())
    # And the token it held is not in its output
    assert token is None or token not in log


def test_a_sidecar_with_its_token_registers_comfyui_with_passing_checks(
        acl_consul: AclConsul, registered: SidecarRun) -> None:
    entry = next(e for e in acl_consul.passing() if e["Service"]["ID"] == registered.service_id)
    assert entry["Service"]["Service"] == SERVICE
    assert entry["Service"]["Meta"]["gpu_uuid"] == "GPU-allowed"
    checks = {c["CheckID"]: c["Status"] for c in entry["Checks"]}
    assert checks[f"{registered.service_id}:alive"] == "passing"
    assert checks[f"{registered.service_id}:http"] == "passing"


@pytest.mark.parametrize("name", ["redis", "comfyui-admin"])
def test_the_sidecar_token_cannot_register_another_service(acl_consul: AclConsul,
                                                           name: str) -> None:
    response = acl_consul.api("PUT", "/v1/agent/service/register", acl_consul.sidecar_token,
                              {"Name": name, "ID": f"{name}-1", "Port": 6379})
    assert response.status_code == 403, response.text
    assert f"{name}-1" not in acl_consul.agent_services()


def test_no_token_appears_in_a_sidecars_log_over_its_whole_life(
        acl_consul: AclConsul, start_sidecar: Any) -> None:
    # Given a sidecar (logging at DEBUG) that registers with its token and turns passing
    run: SidecarRun = start_sidecar("lifecycle", acl_consul.sidecar_token)
    wait_until(lambda: any(e["Service"]["ID"] == run.service_id for e in acl_consul.passing()),
               START_TIMEOUT, lambda: f"{run.service_id} passing; log:\n{run.proc.log_tail()}")
    # When it is stopped, Then it deregisters and exits cleanly
    assert run.proc.stop() == 0, run.proc.log_tail()
    assert run.service_id not in acl_consul.agent_services()
    log = run.proc.log_path.read_text(errors="replace")
    assert "sidecar.registered" in log and "sidecar.deregistered" in log, log
    # And no token appears anywhere in its output
    for secret in (acl_consul.sidecar_token, acl_consul.worker_token, acl_consul.management):
        assert secret not in log


# ---------------------------------------------------------------------------------- worker

# py-consul 1.8's asyncio client builds its aiohttp connector with `ssl_context=` /
# `verify_ssl=`, which aiohttp 3.14 deprecates; the worker only prints this warning once.
AIO_CONSUL_WARNING = pytest.mark.filterwarnings(
    "ignore:ssl_context is deprecated:DeprecationWarning",
    "ignore:verify_ssl is deprecated:DeprecationWarning")


@AIO_CONSUL_WARNING
def test_a_worker_with_its_token_finds_the_passing_node(
        acl_consul: AclConsul, registered: SidecarRun, sim: SimNodeProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # py-consul prefers CONSUL_HTTP_TOKEN over the token it is given: keep the run's env out
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    nodes = _first_view(acl_consul, acl_consul.worker_token, want=registered.service_id)
    node = next(n for n in nodes if n.name == registered.service_id)
    assert node.url == sim.url
    assert node.meta["gpu_uuid"] == "GPU-allowed"


@AIO_CONSUL_WARNING
def test_a_worker_without_a_token_finds_no_nodes(
        acl_consul: AclConsul, registered: SidecarRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    # Given the node is passing, as an operator sees it
    assert any(e["Service"]["ID"] == registered.service_id for e in acl_consul.passing())
    # When a worker watches Consul with no token, Then Consul shows it no node
    assert _first_view(acl_consul, None, want=None) == []


def test_the_prometheus_token_discovers_the_nodes_and_their_meta(
        acl_consul: AclConsul, registered: SidecarRun) -> None:
    # Given the node is passing; When Prometheus's consul_sd asks with its token for the
    # services, then for each one's instances (the two calls it makes)
    def get(path: str, token: str | None) -> Any:
        headers = {"X-Consul-Token": token} if token else {}
        answer = httpx.get(f"{acl_consul.agent.url}{path}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()
    services = get("/v1/catalog/services", acl_consul.prometheus_token)
    entries = get(f"/v1/health/service/{SERVICE}", acl_consul.prometheus_token)
    # Then it sees the node with the Meta the relabelling reads (GPU UUID, metrics port)
    assert SERVICE in services
    (entry,) = [e for e in entries if e["Service"]["ID"] == registered.service_id]
    assert entry["Service"]["Meta"]["gpu_uuid"] == "GPU-allowed"
    assert entry["Node"]["Address"]
    # And without the token it sees nothing
    assert SERVICE not in get("/v1/catalog/services", None)


def test_the_gateway_token_cordons_a_node_and_its_sidecar_applies_it(
        acl_consul: AclConsul, registered: SidecarRun) -> None:
    key = f"/v1/kv/{availability.kv_key(registered.service_id)}"
    wish = availability.wanted_value(availability.CORDONED, "test", "2026-11-30T00:00:00Z")

    def cordoned() -> bool:
        """The node in maintenance, its reason naming the state (as the workers read it)."""
        entries = acl_consul.api("GET", f"/v1/health/service/{SERVICE}",
                                 acl_consul.management).json()
        return any(check["CheckID"].startswith("_service_maintenance:")
                   and availability.state_of_maintenance(check["Notes"]) == "cordoned"
                   for entry in entries if entry["Service"]["ID"] == registered.service_id
                   for check in entry["Checks"])
    # Neither a sidecar's nor a worker's token may write an operator's wish
    for token in (acl_consul.sidecar_token, acl_consul.worker_token, None):
        assert acl_consul.api("PUT", key, token, json.loads(wish)).status_code == 403
    # The gateway's may, and the sidecar, with only its own token, reads it and applies it
    try:
        written = acl_consul.api("PUT", key, acl_consul.gateway_token, json.loads(wish))
        assert written.status_code == 200, written.text
        wait_until(cordoned, 20, "the sidecar to apply the cordon")
        assert "sidecar.wish_unreadable" not in registered.proc.log_path.read_text()
    finally:
        assert acl_consul.api("DELETE", key, acl_consul.gateway_token).status_code == 200
    # And lifting it takes the node out of maintenance for everyone (the catalog too, which
    # Consul itself would leave behind under default deny: node_sidecar/main.py)
    wait_until(lambda: not cordoned(), 20, "the sidecar to lift the cordon")
