"""`MESH=nomad make up`: Consul and Nomad dev agents on loopback running our jobs with `nomad job run`.

Each job file in nomad/ is rendered by Nomad itself with local variables (`nomad job run
-output`), turned into its local variant by `nomad_local.localize` (raw_exec, the simulator),
and submitted with `nomad job run -json`. Nomad then supervises every process: a simulated node
that dies is restarted by Nomad, not by us. Ctrl-C stops the jobs, then the agents.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import httpx

from comfy_service.agents.binaries import REPO_ROOT, agent_binary
from comfy_service.agents.consul_agent import ConsulAgent
from comfy_service.agents.nomad_agent import NomadAgent
from comfy_service.agents.process import remove_tree, short_tmpdir
from comfy_service.nomad_local import LocalRun, hcl_vars, localize
from comfy_service.polling import wait_until

JOBS_DIR = REPO_ROOT / "nomad"
NODE_JOB, SERVICE_JOB = "comfyui", "comfy-service"
# Room for the sidecar's drain: its kill_timeout is drain_timeout + 15 s.
LOCAL_DRAIN_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 10.0


LOCAL_PASSTHROUGH_ENV = ("GPU_READINGS_FILE",)


class NomadCluster:
    """Local Consul + Nomad agents and the jobs they run; `lines` says what is where."""

    def __init__(self, run_dir: pathlib.Path, environ: Mapping[str, str]) -> None:
        self.run_dir = run_dir
        self.environ = environ
        self.consul: ConsulAgent | None = None
        self.nomad: NomadAgent | None = None
        self.lines: list[str] = []
        self.jobs: list[str] = []

    # --- agents --------------------------------------------------------------------------------
    def start_agents(self) -> None:
        self.consul = ConsulAgent(agent_binary("consul", self.environ), short_tmpdir("consul-"))
        self.consul.start()
        self.nomad = NomadAgent(agent_binary("nomad", self.environ), short_tmpdir("nomad-"),
                                node_name="comfy-local",
                                consul_http_addr=self.consul.http_addr,
                                max_kill_timeout=f"{LOCAL_DRAIN_TIMEOUT_S + 30}s")
        self.nomad.start()
        self.lines.append(f"consul     {self.consul.url}/ui (dev agent; log {self.consul.log_path})")
        self.lines.append(f"nomad      {self.nomad.url}/ui/jobs (dev agent; log {self.nomad.log_path})")

    def agent_failure(self) -> str | None:
        for agent in (self.consul, self.nomad):
            if agent is not None and agent.proc is not None and agent.proc.poll() is not None:
                return f"the {agent.name} agent exited with code {agent.proc.returncode}"
        return None

    # --- jobs ----------------------------------------------------------------------------------
    def nomad_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.nomad is not None
        done = self.nomad.cli(*args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"nomad {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        return done

    def put_variable(self, path: str, items: Mapping[str, str]) -> None:
        """A Nomad Variable the jobs' templates read their secrets from."""
        assert self.nomad is not None
        # Nomad refuses empty values: unset ones are left out (the templates skip them), and
        # `managed_by` keeps the variable from being empty.
        body = {"Path": path, "Items": {"managed_by": "comfy-service up",
                                        **{k: v for k, v in items.items() if v}}}
        httpx.put(f"{self.nomad.url}/v1/var/{path}", json=body,
                  timeout=REQUEST_TIMEOUT_S).raise_for_status()

    def run_job(self, name: str, variables: Mapping[str, Any], local: LocalRun) -> dict[str, Any]:
        """Render nomad/<name>.nomad.hcl, localize it, `nomad job run -json` it; the job JSON."""
        source = JOBS_DIR / f"{name}.nomad.hcl"
        rendered = json.loads(self.nomad_cli("job", "run", "-output", *hcl_vars(variables),
                                             str(source)).stdout)
        job = localize(rendered["Job"], local)
        jobs_dir = self.run_dir / "jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        path = jobs_dir / f"{name}.json"
        path.write_text(json.dumps({"Job": job}, indent=2))
        self.nomad_cli("job", "run", "-detach", "-json", str(path))
        self.jobs.append(str(job["ID"]))
        return job

    def passing(self, service: str) -> int:
        assert self.consul is not None
        try:
            answer = httpx.get(f"{self.consul.url}/v1/health/service/{service}",
                               params={"passing": "true"}, timeout=REQUEST_TIMEOUT_S)
        except httpx.HTTPError:
            return 0
        return len(answer.json()) if answer.status_code == 200 else 0

    def stop(self) -> None:
        if self.nomad is not None and self.nomad.running:
            for job in reversed(self.jobs):
                # The drain of each node is bounded by its kill_timeout.
                self.nomad.cli("job", "stop", "-purge", job, timeout=LOCAL_DRAIN_TIMEOUT_S + 60)
        for agent in (self.nomad, self.consul):
            if agent is not None:
                agent.stop()
                remove_tree(agent.workdir)


def start_cluster(cluster: NomadCluster, redis_url: str, api_port: int, sim_nodes: int,
                  sim_step_ms: float, output_dir: pathlib.Path, api_keys: str) -> str:
    """Start the agents and run both jobs on them; the gateway URL."""
    cluster.start_agents()
    return run_jobs(cluster, redis_url, api_port, sim_nodes, sim_step_ms, output_dir, api_keys)


def run_jobs(cluster: NomadCluster, redis_url: str, api_port: int, sim_nodes: int,
             sim_step_ms: float, output_dir: pathlib.Path, api_keys: str) -> str:
    """`nomad job run` both jobs; wait for the sidecars and the gateway; the gateway URL."""
    assert cluster.consul is not None
    # Simulated nodes have no GPU: GPU_READINGS_FILE (a JSON reading) lets their sidecars
    # report one, so GPU metrics and Meta can be seen and tested locally.
    passed = {k: cluster.environ[k] for k in LOCAL_PASSTHROUGH_ENV if cluster.environ.get(k)}
    local = LocalRun(python=sys.executable, redis_server="redis-server",
                     consul_addr=cluster.consul.http_addr, output_dir=str(output_dir),
                     data_dir=str(cluster.run_dir), sim_step_ms=sim_step_ms, env=passed)
    cluster.put_variable(f"nomad/jobs/{NODE_JOB}", {"consul_token": ""})
    cluster.put_variable(f"nomad/jobs/{SERVICE_JOB}", {"api_keys": api_keys, "consul_token": ""})
    cluster.run_job(NODE_JOB, {"nodes": sim_nodes, "instances_per_gpu": 1,
                               "drain_timeout": LOCAL_DRAIN_TIMEOUT_S}, local)
    cluster.run_job(SERVICE_JOB, {
        "redis_url": redis_url,
        "gateway": {"count": 1, "port": api_port, "workers": 1, "cpu": 200, "memory": 512},
        "worker": {"count": 1, "node_slots": 2, "cpu": 200, "memory": 512}}, local)
    wait_until(lambda: cluster.passing(NODE_JOB) >= sim_nodes, 120,
               f"{sim_nodes} sidecars passing in Consul")
    wait_until(lambda: cluster.passing("comfy-gateway") >= 1, 120, "the gateway passing in Consul")
    cluster.lines.append(f"comfyui    {sim_nodes} simulated nodes (job {NODE_JOB}), "
                         f"each with a sidecar passing in Consul")
    cluster.lines.append(f"worker     job {SERVICE_JOB}, group worker")
    return f"http://127.0.0.1:{api_port}"
