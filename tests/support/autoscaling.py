"""The Nomad Autoscaler on a local cluster (tests/support/nomad_cluster.py), for the end-to-end
test and `make bench BENCH=autoscale`: a Prometheus reading the workers' backlog, the agent, and
the comfyui group bounded to the few simulated nodes this machine runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from comfy_service.agents.autoscaler_agent import AutoscalerAgent
from comfy_service.agents.process import managed, short_tmpdir
from comfy_service.polling import wait_until
from tests.support.monitoring import PrometheusProcess, render_prometheus_config
from tests.support.nomad_cluster import Cluster
from tests.support.processes import free_port


def closed_loopback_url() -> str:
    """An address nothing listens on: where the unused Alertmanager or agents point."""
    return f"http://127.0.0.1:{free_port()}"


def backlog_prometheus(root: Path, cluster: Cluster) -> PrometheusProcess:
    """Prometheus with the production config, scraping the cluster's workers through its Consul.

    No rules: only the workers' gauges matter here; alerts go to a closed loopback port."""
    config = render_prometheus_config(cluster.consul.removeprefix("http://"),
                                      closed_loopback_url(), rule_files=())
    return PrometheusProcess(root, config)


@contextmanager
def running_autoscaler(binary: str, cluster: Cluster,
                       prometheus: PrometheusProcess) -> Iterator[AutoscalerAgent]:
    """The autoscaler agent reading the group's policy from the cluster's Nomad, stopped after."""
    agent = AutoscalerAgent(binary, short_tmpdir("autoscaler-"), nomad_url=cluster.nomad,
                            prometheus_url=prometheus.url)
    with managed(agent):
        yield agent


def bound_group(cluster: Cluster, maximum: int) -> None:
    """Lower the group's scaling max, as `-var scaling=...` would: this machine runs a few
    simulated nodes, not the 16 GPUs of the default (`make up` passes no such variable)."""
    job = cluster.get(f"{cluster.nomad}/v1/job/comfyui")
    job["TaskGroups"][0]["Scaling"]["Max"] = maximum
    httpx.post(f"{cluster.nomad}/v1/job/comfyui", json={"Job": job},
               timeout=10).raise_for_status()


def group_policy(cluster: Cluster) -> dict[str, Any]:
    """The group's scaling policy as Nomad hands it to the autoscaler."""
    (stub,) = [p for p in cluster.get(f"{cluster.nomad}/v1/scaling/policies")
               if p["Target"].get("Job") == "comfyui"]
    policy: dict[str, Any] = cluster.get(f"{cluster.nomad}/v1/scaling/policy/{stub['ID']}")
    return policy


def backlog_query(policy: dict[str, Any]) -> str:
    """The PromQL of the policy's one check, the backlog per node slot."""
    (check,) = policy["Policy"]["check"][0]["backlog"]
    return str(check["query"])


def ready_to_scale(cluster: Cluster, prometheus: PrometheusProcess,
                   maximum: int) -> dict[str, Any]:
    """Bound the group to `maximum` and wait until its policy says so, Prometheus reads the
    backlog signal and the job update's deployment is over (Nomad refuses to scale during
    one); the policy."""
    wait_until(cluster.deployed, 60, "the first deployment to finish")
    bound_group(cluster, maximum)
    policy: dict[str, Any] = wait_until(
        lambda: (found := group_policy(cluster))["Max"] == maximum and found, 30,
        f"the policy's max at {maximum}")
    query = backlog_query(policy)
    wait_until(lambda: prometheus.query(query), 60, "the backlog signal in Prometheus",
               interval=0.5)
    wait_until(cluster.deployed, 60, "the job update's deployment to finish")
    return policy


def autoscaled(cluster: Cluster) -> list[dict[str, Any]]:
    """The group's count changes made by the autoscaler (they carry its policy id in their
    Meta), latest first as Nomad lists them; each has PreviousCount, Count and Time (ns)."""
    events = cluster.get(f"{cluster.nomad}/v1/job/comfyui/scale")["TaskGroups"]["gpu"]["Events"]
    return [e for e in events if "nomad_policy_id" in (e.get("Meta") or {})]
