"""The job files in nomad/: formatted, variables documented, valid and plannable on a real Nomad,
and their local variant (what `MESH=nomad make up` runs) valid too."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from comfy_service.nomad_local import LocalRun, localize
from tests.agents_fixtures import (  # noqa: F401 - fixtures are used by name
    NomadAgent,
    consul_agent,
    nomad_agent,
    nomad_bin,
)
from tests.support.processes import ROOT

JOB_FILES = sorted((ROOT / "nomad").glob("*.nomad.hcl"))
# Monitoring runs only in production (stock Prometheus and Alertmanager images): no local variant.
LOCAL_JOB_FILES = [p for p in JOB_FILES if p.name != "monitoring.nomad.hcl"]
LOCAL = LocalRun(python=sys.executable, redis_server="redis-server",
                 consul_addr="127.0.0.1:8500", output_dir="/tmp/outputs", data_dir="/tmp")


def test_every_deployable_has_a_job_file() -> None:
    assert {p.name for p in JOB_FILES} == {"comfyui.nomad.hcl", "comfy-service.nomad.hcl",
                                           "redis.nomad.hcl", "monitoring.nomad.hcl"}


def _variables(text: str) -> dict[str, str]:
    """Each `variable "name" { ... }` block's body, found by brace depth."""
    found: dict[str, str] = {}
    for match in re.finditer(r'^variable "([^"]+)" \{', text, re.M):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        found[match.group(1)] = text[match.end():end - 1]
    return found


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_variable_has_description_type_and_default(path: Path) -> None:
    variables = _variables(path.read_text())
    assert variables, f"{path.name} declares no variables"
    for name, body in variables.items():
        for attribute in ("description", "type", "default"):
            assert re.search(rf"^\s*{attribute}\s*=", body, re.M), f"{name} lacks {attribute}"


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_file_is_nomad_fmt_clean(nomad_agent: NomadAgent, path: Path) -> None:  # noqa: F811
    done = nomad_agent.cli("fmt", "-check", "-list=true", str(path))
    assert done.returncode == 0, f"nomad fmt would change {path.name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_file_validates_and_plans(nomad_agent: NomadAgent, path: Path) -> None:  # noqa: F811
    validated = nomad_agent.cli("job", "validate", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    # plan: 0 = no change, 1 = allocations would be created (this agent has no docker driver
    # or GPU, so they would not be placed; the plan itself is sound); 255 = an error.
    planned = nomad_agent.cli("job", "plan", str(path))
    assert planned.returncode in (0, 1), planned.stdout + planned.stderr
    assert "Job:" in planned.stdout


@pytest.mark.parametrize("path", LOCAL_JOB_FILES, ids=lambda p: p.name)
def test_local_variant_is_valid_raw_exec(nomad_agent: NomadAgent, path: Path,  # noqa: F811
                                         tmp_path: Path) -> None:
    rendered = nomad_agent.cli("job", "run", "-output", str(path))
    assert rendered.returncode == 0, rendered.stderr
    job = localize(json.loads(rendered.stdout)["Job"], LOCAL)
    tasks = [task for group in job["TaskGroups"] for task in group["Tasks"]]
    assert {task["Driver"] for task in tasks} == {"raw_exec"}
    assert all(not (task["Resources"] or {}).get("Devices") for task in tasks)
    local_file = tmp_path / "job.json"
    local_file.write_text(json.dumps({"Job": job}))
    validated = nomad_agent.cli("job", "validate", "-json", str(local_file))
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_node_group_drains_before_comfyui_stops(nomad_agent: NomadAgent) -> None:  # noqa: F811
    """The sidecar leads the group, so Nomad stops it (and its drain) first; its kill_timeout
    covers the drain; the group can be scaled within bounds."""
    rendered = nomad_agent.cli("job", "run", "-output", str(ROOT / "nomad/comfyui.nomad.hcl"))
    group = json.loads(rendered.stdout)["Job"]["TaskGroups"][0]
    tasks = {task["Name"]: task for task in group["Tasks"]}
    sidecar = tasks["sidecar"]
    assert sidecar["Leader"] is True
    assert sidecar["Lifecycle"] == {"Hook": "prestart", "Sidecar": True}
    drain_s = int(sidecar["Env"]["DRAIN_TIMEOUT_S"])
    assert sidecar["KillTimeout"] / 1e9 > drain_s
    assert tasks["comfyui"]["Resources"]["Devices"][0]["Name"] == "nvidia/gpu"
    assert group["Scaling"]["Min"] >= 1 and group["Scaling"]["Max"] > group["Scaling"]["Min"]


def test_two_instances_per_gpu_get_two_ports_and_both_are_followed(
        nomad_agent: NomadAgent) -> None:  # noqa: F811
    rendered = nomad_agent.cli("job", "run", "-output", "-var", "instances_per_gpu=2",
                               str(ROOT / "nomad/comfyui.nomad.hcl"))
    assert rendered.returncode == 0, rendered.stderr
    group = json.loads(rendered.stdout)["Job"]["TaskGroups"][0]
    labels = {port["Label"] for net in group["Networks"] for port in net["DynamicPorts"]}
    assert {"comfyui0", "comfyui1"} <= labels
    tasks = {task["Name"]: task for task in group["Tasks"]}
    assert tasks["comfyui"]["Env"]["COMFYUI_PORTS"] == \
        "${NOMAD_PORT_comfyui0},${NOMAD_PORT_comfyui1}"
    assert tasks["sidecar"]["Env"]["COMFYUI_URLS"] == \
        "http://${NOMAD_ADDR_comfyui0},http://${NOMAD_ADDR_comfyui1}"
