"""The Nomad Autoscaler on our backlog: the real agent reads the comfyui group's policy from a
local cluster (`MESH=nomad up`), asks a real Prometheus scraping the workers, and scales the
group out under a burst and back in once idle; its cluster policy (GPU machines) parses."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_service.agents.autoscaler_agent import AutoscalerAgent
from comfy_service.agents.binaries import AgentBinaryNotFound, agent_binary
from comfy_service.agents.process import managed, short_tmpdir
from comfy_service.nomad_local import LOCAL_AUTOSCALING
from tests.support.autoscaling import (
    autoscaled,
    backlog_prometheus,
    backlog_query,
    closed_loopback_url,
    ready_to_scale,
    running_autoscaler,
)
from tests.support.monitoring import PrometheusProcess
from tests.support.nomad_cluster import Cluster, running_cluster
from tests.support.processes import ROOT, required_binary, wait_until

AUTOSCALER_DIR = ROOT / "nomad" / "autoscaler"
POLICY_DIR = AUTOSCALER_DIR / "policies"
MAX_NODES = 3
# 24 tasks of 40 steps (2 s each on the simulator): about 48 s for one node, which only holds
# one prompt at a time, so the backlog lasts past the autoscaler's first decisions.
BURST, STEPS = 24, 40


@pytest.fixture(scope="module")
def autoscaler_bin() -> str:
    return required_binary(agent_binary, "nomad-autoscaler", AgentBinaryNotFound)


def test_the_lookup_finds_it_by_its_env_override_then_the_pinned_cache(
        tmp_path: Path, autoscaler_bin: str) -> None:
    # Given none on PATH and an empty cache: the lookup fails, saying how to build it
    bare = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "HOME": str(tmp_path)}
    with pytest.raises(AgentBinaryNotFound, match="make agents"):
        agent_binary("nomad-autoscaler", bare)
    # When the pinned build is in the cache (the name `make agents` gives it), it is found
    pins = dict(line.split("=", 1) for line in
                (ROOT / "tools/agents/versions.env").read_text().splitlines()
                if line.startswith("NOMAD_AUTOSCALER_VERSION="))
    cached = tmp_path / "cache" / "comfy-service" / "bin"
    cached.mkdir(parents=True)
    pinned = cached / f"nomad-autoscaler-{pins['NOMAD_AUTOSCALER_VERSION']}"
    pinned.symlink_to(autoscaler_bin)
    assert agent_binary("nomad-autoscaler", bare) == str(pinned)
    # And $NOMAD_AUTOSCALER_BIN (the name's '-' as '_') wins
    assert agent_binary("nomad-autoscaler",
                        {**bare, "NOMAD_AUTOSCALER_BIN": autoscaler_bin}) == autoscaler_bin


# --- the cluster policy: parsed by the autoscaler itself --------------------------------------

def _load_policy_dir(autoscaler_bin: str, policy_dir: Path) -> tuple[list[Any], list[str]]:
    """What the autoscaler's file source made of `policy_dir`: the policies it parsed (as it
    logs them) and its errors.

    Nomad's policies are left out and no cloud target is declared, so the aws-asg target is
    never started: the agent logs each parsed policy, fails to find its target, and sends
    nothing anywhere (its Nomad and Prometheus addresses are closed loopback ports)."""
    agent = AutoscalerAgent(autoscaler_bin, short_tmpdir("autoscaler-"),
                            nomad_url=closed_loopback_url(),
                            prometheus_url=closed_loopback_url(),
                            policy_dir=policy_dir, nomad_source=False)
    with managed(agent):
        def loaded() -> tuple[list[Any], list[str]] | None:
            errors = [str(r.get("error")) for r in agent.logged("failed to handle directory")]
            policies = [r["policy_id"] for r in agent.logged("creating new policy handler")]
            return (policies, errors) if policies or errors else None
        return wait_until(loaded, 20, "the file policy source to load the directory",
                          interval=0.2)


def _group_query() -> str:
    """The backlog query of the comfyui group's policy, as Nomad renders the job file."""
    nomad = required_binary(agent_binary, "nomad", AgentBinaryNotFound)
    done = subprocess.run([nomad, "job", "run", "-output", str(ROOT / "nomad/comfyui.nomad.hcl")],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    policy = json.loads(done.stdout)["Job"]["TaskGroups"][0]["Scaling"]["Policy"]
    (check,) = policy["check"][0]["backlog"]
    return str(check["query"])


def test_the_cluster_policy_parses_in_the_autoscaler(autoscaler_bin: str) -> None:
    policies, errors = _load_policy_dir(autoscaler_bin, POLICY_DIR)
    assert not errors
    (policy,) = policies
    assert (policy["Type"], policy["Min"], policy["Max"], policy["Enabled"]) == \
        ("cluster", 1, 16, True)
    (check,) = policy["Checks"]
    assert (check["Name"], check["Source"]) == ("backlog", "prometheus")
    # The machines follow the very signal the group scales on
    assert check["Query"] == _group_query()
    assert check["Strategy"] == {"Name": "target-value", "Config": {"target": "1"}}
    assert policy["Target"]["Name"] == "aws-asg"
    config = policy["Target"]["Config"]
    assert (config["node_class"], config["node_drain_deadline"]) == ("gpu", "15m")


def test_a_broken_policy_file_is_refused_by_the_same_load(autoscaler_bin: str,
                                                         tmp_path: Path) -> None:
    # Given the cluster policy with its min above its max
    text = (POLICY_DIR / "cluster-gpu.hcl").read_text()
    assert "max     = 16" in text
    (tmp_path / "cluster-gpu.hcl").write_text(text.replace("max     = 16", "max     = 0"))
    # Then the same load reports it refused, so the test above sees the autoscaler's verdict
    policies, errors = _load_policy_dir(autoscaler_bin, tmp_path)
    assert not policies
    assert any("Min must not be greater Max" in error for error in errors), errors


def test_the_autoscaler_files_are_nomad_fmt_clean() -> None:
    nomad = required_binary(agent_binary, "nomad", AgentBinaryNotFound)
    done = subprocess.run([nomad, "fmt", "-check", "-list=true", "-recursive",
                           str(AUTOSCALER_DIR)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"nomad fmt would change:\n{done.stdout}{done.stderr}"


# --- the comfyui group, scaled on the backlog -------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # One node: the group's count before the autoscaler acts (its min is 1)
    yield from running_cluster(tmp_path_factory.mktemp("autoscaled") / "run", nodes=1)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory,
               cluster: Cluster) -> Iterator[PrometheusProcess]:
    process = backlog_prometheus(tmp_path_factory.mktemp("prometheus"), cluster)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def autoscaler(autoscaler_bin: str, cluster: Cluster,
               prometheus: PrometheusProcess) -> Iterator[AutoscalerAgent]:
    with running_autoscaler(autoscaler_bin, cluster, prometheus) as agent:
        yield agent


class Histories:
    """Every prompt each node's ComfyUI ran, read from its /history while it runs: nodes the
    autoscaler removes take their history with them, so it is read all along."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Allocations being stopped still run their drain: read them to the end
                allocs = self.cluster.allocs(stopping=True)
            except (httpx.HTTPError, KeyError):
                allocs = []
            for alloc in allocs:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{alloc['port']}/history", timeout=2)
                    prompts = set(answer.json()) if answer.status_code == 200 else set()
                except (httpx.HTTPError, ValueError):
                    continue  # a node that just stopped
                self.seen.setdefault(alloc["node"], set()).update(prompts)
            self._stop.wait(0.2)

    def stop(self) -> dict[str, set[str]]:
        """Stop reading; what was seen, by node."""
        self._stop.set()
        self._thread.join(10)
        return self.seen


@pytest.fixture
def histories(cluster: Cluster) -> Iterator[Histories]:
    reader = Histories(cluster)
    yield reader
    reader.stop()


def test_a_burst_scales_the_group_out_new_nodes_take_work_and_idle_scales_it_in(
        cluster: Cluster, prometheus: PrometheusProcess, autoscaler: AutoscalerAgent,
        histories: Histories) -> None:
    # Given the group at one node, its policy in Nomad with the local timing, and Prometheus
    # reading the backlog signal from the worker (0: nothing waits)
    (first,) = wait_until(lambda: cluster.settled(1), 90, "one node allocation passing")
    policy = ready_to_scale(cluster, prometheus, MAX_NODES)
    assert policy["Min"] == 1
    assert {k: policy["Policy"][k] for k in LOCAL_AUTOSCALING} == LOCAL_AUTOSCALING
    assert float(prometheus.query(backlog_query(policy))[0]["value"][1]) == 0.0

    # When a burst of tasks arrives
    ids = cluster.submit(BURST, steps=STEPS)

    # Then the autoscaler raises the count to the max, and the new nodes pass in Consul
    wait_until(lambda: cluster.count() == MAX_NODES, 60, f"the count to reach {MAX_NODES}",
               interval=0.5)
    allocs = wait_until(lambda: cluster.settled(MAX_NODES), 120,
                        f"{MAX_NODES} node allocations passing", interval=0.5)
    new_nodes = {a["node"] for a in allocs} - {first["node"]}
    # And every task succeeds, the new nodes running some of them
    records = cluster.finish(ids, timeout=240)
    assert [r["status"] for r in records] == ["succeeded"] * BURST, \
        [(r["task_id"], r["status"], r["error"]) for r in records if r["status"] != "succeeded"]
    assert new_nodes <= {r["node"] for r in records}, "a new node ran no task"

    # And once idle the group goes back to its min, the removed nodes deregistered
    wait_until(lambda: cluster.count() == 1 and cluster.settled(1), 150,
               "the group back at one node", interval=0.5)
    seen = histories.stop()
    counts = [event["Count"] for event in autoscaled(cluster)]  # (the latest first)
    assert max(counts) == MAX_NODES and counts[0] == 1, counts

    # And each task ran exactly once, on the node its record names: none lost, none twice
    runs = Counter(prompt for prompts in seen.values() for prompt in prompts)
    assert {task_id: runs[task_id] for task_id in ids} == dict.fromkeys(ids, 1)
    for record in records:
        assert record["task_id"] in seen[record["node"]], record
