"""The local variant of the Nomad jobs: what `localize` swaps and what it must keep (pure)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from comfy_service.nomad_local import LOCAL_AUTOSCALING, LocalRun, hcl_vars, local_argv, localize

RUN = LocalRun(python="/venv/bin/python", redis_server="/usr/bin/redis-server",
               consul_addr="127.0.0.1:18500", output_dir="/run/outputs", data_dir="/run",
               sim_step_ms=25, env={"LOG_FORMAT": "console"})


def _task(name: str, config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Name": name, "Driver": "docker", "Config": config, "Env": env or {},
            "KillTimeout": 615_000_000_000, "Leader": name == "sidecar",
            "VolumeMounts": [{"Volume": "models", "Destination": "/models"}],
            "Resources": {"CPU": 4000, "MemoryMB": 24576,
                          "Devices": [{"Name": "nvidia/gpu", "Count": 1}]}}


JOB: dict[str, Any] = {"ID": "comfyui", "TaskGroups": [{
    "Name": "gpu", "Count": 2, "Volumes": {"models": {"Type": "host"}},
    # The policy as `nomad job run -output` renders the job file's (blocks become lists)
    "Scaling": {"Min": 1, "Max": 16, "Enabled": True, "Policy": {
        "evaluation_interval": "30s", "cooldown": "3m",
        "check": [{"backlog": [{"source": "prometheus", "query": "max(x)",
                                "strategy": [{"target-value": [{"target": 1}]}]}]}]}},
    "Tasks": [
        _task("comfyui", {"image": "node:1", "network_mode": "host"},
              {"COMFYUI_PORTS": "${NOMAD_PORT_comfyui0}", "LISTEN_ADDR": "${NOMAD_IP_comfyui0}",
               "GPU_UUID_FILE": "${NOMAD_ALLOC_DIR}/gpu-uuid"}),
        _task("sidecar", {"image": "node:1", "entrypoint": ["comfy-service"], "args": ["sidecar"]},
              {"CONSUL_HTTP_ADDR": "${attr.unique.network.ip-address}:8500",
               "NVIDIA_VISIBLE_DEVICES": "all", "NODE_SLOTS": "2"}),
    ]}]}


def test_docker_tasks_become_raw_exec_with_the_virtualenv() -> None:
    local = localize(JOB, RUN)
    comfyui, sidecar = local["TaskGroups"][0]["Tasks"]
    assert comfyui["Driver"] == sidecar["Driver"] == "raw_exec"
    assert sidecar["Config"] == {"command": "/venv/bin/python",
                                 "args": ["-m", "comfy_service.cli", "sidecar"]}
    assert comfyui["Config"]["command"] == "/venv/bin/python"
    assert comfyui["Config"]["args"][:2] == ["-m", "comfyui_sim"]
    assert comfyui["Config"]["args"][2:6] == ["--listen", "${NOMAD_IP_comfyui0}",
                                              "--port", "${NOMAD_PORT_comfyui0}"]
    assert comfyui["Config"]["args"][-2:] == ["--step-ms", "25"]


def test_gpus_volumes_and_gpu_env_go_local_addresses_come_in() -> None:
    local = localize(JOB, RUN)
    group = local["TaskGroups"][0]
    comfyui, sidecar = group["Tasks"]
    assert group["Volumes"] is None
    assert all(t["Resources"]["Devices"] is None and t["VolumeMounts"] is None
               for t in group["Tasks"])
    assert "GPU_UUID_FILE" not in comfyui["Env"] and "NVIDIA_VISIBLE_DEVICES" not in sidecar["Env"]
    assert sidecar["Env"]["CONSUL_HTTP_ADDR"] == "127.0.0.1:18500"
    assert sidecar["Env"]["NODE_SLOTS"] == "2"
    assert sidecar["Env"]["LOG_FORMAT"] == "console"


def test_what_nomad_decides_stays_as_the_job_file_says() -> None:
    local = localize(JOB, RUN)
    group = local["TaskGroups"][0]
    assert group["Count"] == 2 and (group["Scaling"]["Min"], group["Scaling"]["Max"]) == (1, 16)
    assert group["Scaling"]["Policy"]["check"] == JOB["TaskGroups"][0]["Scaling"]["Policy"]["check"]
    sidecar = group["Tasks"][1]
    assert sidecar["Leader"] is True and sidecar["KillTimeout"] == 615_000_000_000


def test_the_autoscaling_policy_reacts_in_seconds_for_simulated_nodes() -> None:
    policy = localize(JOB, RUN)["TaskGroups"][0]["Scaling"]["Policy"]
    assert (policy["evaluation_interval"], policy["cooldown"]) == \
        (LOCAL_AUTOSCALING["evaluation_interval"], LOCAL_AUTOSCALING["cooldown"])
    custom = dataclasses.replace(RUN, autoscaling={"cooldown": "5s"})
    assert localize(JOB, custom)["TaskGroups"][0]["Scaling"]["Policy"]["cooldown"] == "5s"


def test_a_group_without_a_policy_gets_none() -> None:
    job = copy.deepcopy(JOB)
    job["TaskGroups"][0]["Scaling"] = {"Min": 1, "Max": 16}
    assert localize(job, RUN)["TaskGroups"][0]["Scaling"] == {"Min": 1, "Max": 16}


def test_localize_leaves_its_input_alone() -> None:
    before = copy.deepcopy(JOB)
    localize(JOB, RUN)
    assert JOB == before


def test_redis_runs_the_local_binary_with_its_data_in_the_task_dir() -> None:
    task = _task("redis", {"image": "redis:7", "args": ["redis-server", "--dir", "/data",
                                                        "--appendonly", "yes"]})
    assert local_argv(RUN, task) == ["/usr/bin/redis-server", "--dir", "${NOMAD_TASK_DIR}",
                                     "--appendonly", "yes"]


def test_an_image_with_no_local_equivalent_is_refused() -> None:
    with pytest.raises(ValueError, match="no local equivalent"):
        local_argv(RUN, _task("other", {"image": "x", "entrypoint": ["/bin/other"]}))


@pytest.mark.parametrize("values,expected", [
    ({"nodes": 3}, ["-var", "nodes=3"]),
    ({"redis_url": "redis://h:1/0"}, ["-var", "redis_url=redis://h:1/0"]),
    ({"gateway": {"count": 1, "port": 8080}}, ["-var", "gateway={count = 1, port = 8080}"]),
    ({"datacenters": ["dc1", "dc2"]}, ["-var", 'datacenters=["dc1", "dc2"]']),
    ({"flag": True, "ratio": 0.5}, ["-var", "flag=true", "-var", "ratio=0.5"]),
])
def test_variables_are_passed_in_hcl_syntax(values: dict[str, Any], expected: list[str]) -> None:
    assert hcl_vars(values) == expected
