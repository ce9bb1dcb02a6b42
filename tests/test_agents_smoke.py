"""Smoke tests of the real Consul/Nomad agents through the project's client libraries.

Needs the binaries from ``make agents`` (tools/agents/build.sh); without them the
fixtures fail with that hint. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import consul
import httpx
import nomad
import pytest
import requests
from nomad.api.exceptions import URLNotFoundNomadException

from comfy_service.agents.binaries import REPO_ROOT
from tests.agents_fixtures import (  # noqa: F401 - fixtures are used by name
    AgentBinaryNotFound,
    ConsulAgent,
    NomadAgent,
    agent_binary,
    consul_agent,
    consul_agent_factory,
    consul_bin,
    free_ports,
    nomad_agent,
    nomad_agent_factory,
    nomad_bin,
    processes_under,
    wait_until,
)

# --------------------------------------------------------------------------- helpers


@contextmanager
def consul_client(agent: ConsulAgent) -> Iterator[consul.Consul]:
    client = consul.Consul(host=agent.host, port=agent.port, connections_timeout=10)
    try:
        yield client
    finally:
        # py-consul's HTTPClient.close() is a no-op; close the requests session.
        client.http.session.close()


@contextmanager
def nomad_client(agent: NomadAgent) -> Iterator[nomad.Nomad]:
    with requests.Session() as session:
        yield nomad.Nomad(host=agent.host, port=agent.port, timeout=10, session=session)


class _OkHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    """A loopback HTTP server answering 200 to any GET; yields its /health URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OkHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/health"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def check_status(entries: list[dict], check_id: str) -> str | None:
    for entry in entries:
        for check in entry["Checks"]:
            if check["CheckID"] == check_id:
                return check["Status"]
    return None


# --------------------------------------------------------------------------- consul


def test_consul_agent_is_leader(consul_agent: ConsulAgent) -> None:  # noqa: F811
    with consul_client(consul_agent) as c:
        assert c.status.leader()  # "127.0.0.1:<server port>"
        assert consul_agent.url == f"http://127.0.0.1:{consul_agent.port}"
        assert c.agent.self()["Config"]["NodeName"] == consul_agent.node_name


def test_consul_service_checks_and_blocking_query(
    consul_agent: ConsulAgent,  # noqa: F811
    health_server: str,
) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    sid = f"{name}-1"
    http_id, ttl_id = f"{sid}:http", f"{sid}:ttl"
    with consul_client(consul_agent) as c, consul_client(consul_agent) as watcher:
        assert c.agent.service.register(
            name,
            service_id=sid,
            address="127.0.0.1",
            port=8188,
            tags=["comfyui", "gpu"],
            meta={"gpu_index": "0", "worker": "w1"},
            check=consul.Check.http(health_server, interval="1s", timeout="2s")
            | {"CheckID": http_id, "Name": "http"},
            extra_checks=[consul.Check.ttl("3s") | {"CheckID": ttl_id, "Name": "ttl"}],
        )
        try:
            # The HTTP check passes on its own; the TTL check stays critical until fed.
            def http_passing() -> tuple[int, list[dict]] | None:
                index, entries = c.health.service(name)
                return (index, entries) if check_status(entries, http_id) == "passing" else None

            index, entries = wait_until(http_passing, 30, message="http check passing")
            assert check_status(entries, ttl_id) == "critical"
            assert c.health.service(name, passing=True)[1] == []
            (svc,) = [e["Service"] for e in entries]
            assert svc["ID"] == sid and svc["Port"] == 8188
            assert sorted(svc["Tags"]) == ["comfyui", "gpu"]
            assert svc["Meta"] == {"gpu_index": "0", "worker": "w1"}

            # A blocking query on that index wakes when the TTL check is fed.
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                woke = pool.submit(watcher.health.service, name, index=index, wait="30s")
                assert c.agent.check.ttl_pass(ttl_id, notes="alive")
                new_index, new_entries = woke.result(timeout=40)
                elapsed = time.monotonic() - started
            # A query that timed out would return the same index: a new one means it woke.
            assert int(new_index) > int(index), f"no wake-up after {elapsed:.1f}s"

            assert new_entries and check_status(new_entries, http_id) == "passing"

            def all_passing() -> list[dict]:
                # Keep feeding the TTL so a stalled CI machine cannot let it lapse here.
                c.agent.check.ttl_pass(ttl_id)
                return c.health.service(name, passing=True)[1]

            (entry,) = wait_until(all_passing, 15, message="service passing")
            assert {chk["CheckID"]: chk["Status"] for chk in entry["Checks"]}[ttl_id] == "passing"
            assert entry["Service"]["Meta"]["worker"] == "w1"

            # Without another pass, the 3s TTL lapses and the check turns critical.
            c.agent.check.ttl_pass(ttl_id)
            index, _ = c.health.service(name, passing=True)
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                woke = pool.submit(watcher.health.service, name, index=index, wait="30s", passing=True)
                lapsed_index, lapsed = woke.result(timeout=40)
                elapsed = time.monotonic() - started
            assert int(lapsed_index) > int(index), f"no wake-up after {elapsed:.1f}s"

            def ttl_critical() -> bool:
                return check_status(c.health.service(name)[1], ttl_id) == "critical"

            wait_until(ttl_critical, 15, message="ttl check critical after lapse")
            assert c.health.service(name, passing=True)[1] == []
            assert lapsed == [] or check_status(lapsed, ttl_id) == "critical"
        finally:
            c.agent.service.deregister(sid)
        wait_until(lambda: c.health.service(name)[1] == [], 15, message="service deregistered")


def test_consul_restart_keeps_address_and_persistent_state(
    consul_agent_factory: Callable[..., ConsulAgent],  # noqa: F811
) -> None:
    agent = consul_agent_factory(persistent=True, node_name="comfy-restart")
    with consul_client(agent) as c:
        assert c.kv.put("comfy/restart-probe", "v1")
        url = agent.url
        agent.restart()
        assert agent.url == url
        wait_until(lambda: c.kv.get("comfy/restart-probe")[1], 30, message="kv after restart")
        assert c.kv.get("comfy/restart-probe")[1]["Value"] == b"v1"


# --------------------------------------------------------------------------- nomad


def sleep_job(job_id: str, count: int = 1) -> dict:
    return {
        "Job": {
            "ID": job_id,
            "Name": job_id,
            "Type": "service",
            "Datacenters": ["dc1"],
            # Deployments gate scaling ("job scaling blocked due to active
            # deployment"); a short min_healthy_time lets them finish quickly.
            "Update": {
                "MaxParallel": 2,
                "HealthCheck": "task_states",
                "MinHealthyTime": 500_000_000,
                "HealthyDeadline": 60_000_000_000,
                "ProgressDeadline": 90_000_000_000,
            },
            "TaskGroups": [
                {
                    "Name": "g",
                    "Count": count,
                    "EphemeralDisk": {"SizeMB": 10},
                    "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                    "Tasks": [
                        {
                            "Name": "sleep",
                            "Driver": "raw_exec",
                            "Config": {"command": "/bin/sleep", "args": ["300"]},
                            "Resources": {"CPU": 20, "MemoryMB": 16},
                            "KillTimeout": 1_000_000_000,
                            "LogConfig": {"MaxFiles": 2, "MaxFileSizeMB": 1},
                        }
                    ],
                }
            ],
        }
    }


def test_nomad_node_ready_and_registered_in_consul(
    nomad_agent: NomadAgent,  # noqa: F811
    consul_agent: ConsulAgent,  # noqa: F811
) -> None:
    with nomad_client(nomad_agent) as n:
        nodes = n.nodes.get_nodes()
        assert [node["Status"] for node in nodes] == ["ready"]
        assert nodes[0]["Drivers"]["raw_exec"]["Healthy"]
    with consul_client(consul_agent) as c:
        # Nomad's consul block: the agent registers its own services in Consul.
        wait_until(
            lambda: {"nomad", "nomad-client"} <= set(c.catalog.services()[1]),
            30,
            message="nomad services in consul catalog",
        )


def test_nomad_raw_exec_job_scale_and_stop(nomad_agent: NomadAgent) -> None:  # noqa: F811
    job_id = f"smoke-{uuid.uuid4().hex[:8]}"
    with nomad_client(nomad_agent) as n, httpx.Client(base_url=nomad_agent.url, timeout=10) as h:

        def running() -> list[dict]:
            allocs = n.job.get_allocations(job_id)
            failed = [a for a in allocs if a["ClientStatus"] == "failed"]
            assert not failed, f"allocation failed: {failed[0].get('TaskStates')}"
            return [a for a in allocs if a["ClientStatus"] == "running"]

        def task_processes() -> list[int]:
            return [
                pid
                for pid in processes_under(nomad_agent.data_dir)
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/bin/sleep", b"300"]
            ]

        def deployed() -> bool:
            deployment = n.job.get_deployment(job_id)
            assert deployment["Status"] not in ("failed", "cancelled"), deployment
            return deployment["Status"] == "successful"

        resp = n.jobs.register_job(sleep_job(job_id))
        assert resp["EvalID"]
        try:
            wait_until(lambda: len(running()) == 1, 60, message="1 allocation running")
            wait_until(deployed, 60, message="first deployment successful")

            # python-nomad 2.1.0 has no scale method: POST /v1/job/<id>/scale.
            r = h.post(
                f"/v1/job/{job_id}/scale",
                json={"Count": 2, "Target": {"Group": "g"}, "Message": "smoke test"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["EvalID"]
            allocs = wait_until(lambda: len(running()) == 2 and running(), 60, message="2 running")
            assert n.job.get_job(job_id)["TaskGroups"][0]["Count"] == 2
            ids = [a["ID"] for a in allocs]
            # Real processes: one `/bin/sleep 300` per allocation.
            wait_until(lambda: len(task_processes()) == 2, 30, message="2 sleep processes")
        finally:
            n.job.deregister_job(job_id, purge=True)

        def gone() -> bool:
            try:
                n.job.get_job(job_id)
            except URLNotFoundNomadException:
                return True
            return False

        wait_until(gone, 30, message="job purged")

        def stopped() -> bool:
            for alloc_id in ids:
                try:
                    status = n.allocation.get_allocation(alloc_id)["ClientStatus"]
                except URLNotFoundNomadException:
                    continue  # purged with the job
                if status == "running":
                    return False
            return not task_processes()

        wait_until(stopped, 60, message="allocations and their processes stopped")


JOB_HCL = """
job "validate-me" {
  datacenters = ["dc1"]
  group "g" {
    count = 1
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
    }
  }
}
"""


def test_nomad_job_validate_without_agent(nomad_bin: str, tmp_path: Path) -> None:  # noqa: F811
    binary = nomad_bin
    good, bad = tmp_path / "good.nomad.hcl", tmp_path / "bad.nomad.hcl"
    good.write_text(JOB_HCL)
    bad.write_text(JOB_HCL.replace("count = 1", "count = -1"))
    (closed,) = free_ports(1)  # nothing listens there: the CLI validates locally
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def validate(job: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "job", "validate", f"-address=http://127.0.0.1:{closed}", str(job)],
            capture_output=True, text=True, timeout=60, env=env)

    ok = validate(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Job validation successful" in ok.stdout
    nok = validate(bad)
    assert nok.returncode != 0
    assert "count" in (nok.stdout + nok.stderr).lower()


def test_nomad_job_validate_and_plan_against_agent(
    nomad_agent: NomadAgent,  # noqa: F811
    tmp_path: Path,
) -> None:
    job = tmp_path / "job.nomad.hcl"
    job.write_text(JOB_HCL)
    res = nomad_agent.cli("job", "validate", str(job))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Job validation successful" in res.stdout
    # `job plan` exits 1 when allocations would be created (0 = no change).
    res = nomad_agent.cli("job", "plan", str(job))
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "Scheduler dry-run" in res.stdout


def test_nomad_server_only_agent_validates_and_plans(
    nomad_agent_factory: Callable[..., NomadAgent],  # noqa: F811
    tmp_path: Path,
) -> None:
    agent = nomad_agent_factory(client=False, node_name="comfy-server-only")
    job = tmp_path / "job.nomad.hcl"
    job.write_text(JOB_HCL)
    res = agent.cli("job", "plan", str(job))
    # No client node: the plan is computed but cannot place the allocation.
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "Scheduler dry-run" in res.stdout
    with nomad_client(agent) as n:
        assert n.nodes.get_nodes() == []


def test_binary_lookup_order_env_then_path_then_cache(tmp_path: Path, consul_bin: str) -> None:  # noqa: F811
    # Given no consul on PATH and an empty cache, the lookup fails with the `make agents` hint
    bare = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "HOME": str(tmp_path)}
    with pytest.raises(AgentBinaryNotFound, match="make agents"):
        agent_binary("consul", bare)
    assert not (tmp_path / "cache").exists(), "a lookup must not touch the cache"
    # When the pinned build is in the cache, it is found there
    cached = tmp_path / "cache" / "comfy-service" / "bin"
    cached.mkdir(parents=True)
    version = next(line.split("=", 1)[1] for line in
                   (REPO_ROOT / "tools/agents/versions.env").read_text().splitlines()
                   if line.startswith("CONSUL_VERSION="))
    (cached / f"consul-{version}").symlink_to(consul_bin)
    assert agent_binary("consul", bare) == str(cached / f"consul-{version}")
    # And a binary on PATH wins over the cache, CONSUL_BIN over both
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "consul").symlink_to(consul_bin)
    with_path = {**bare, "PATH": f"{on_path}:/usr/bin:/bin"}
    assert agent_binary("consul", with_path) == str(on_path / "consul")
    assert agent_binary("consul", {**with_path, "CONSUL_BIN": consul_bin}) == consul_bin
    with pytest.raises(AgentBinaryNotFound, match="not an executable"):
        agent_binary("consul", {**bare, "CONSUL_BIN": str(tmp_path / "nothing")})
