"""The local variant of the Nomad jobs, derived from the production job files (pure).

`MESH=nomad make up` runs the very jobs of nomad/*.nomad.hcl: Nomad renders each file with
local variables to its JSON form (`nomad job run -output`), and `localize` swaps only what a
laptop lacks: the docker driver becomes raw_exec running the project's virtualenv, the GPU
node image becomes the simulator, GPU devices and host volumes go, addresses point at the
local agents, and the autoscaling policy reacts in seconds rather than minutes. Counts, ports,
checks, update, restart, scaling bounds, the policy's check and lifecycle stay as written, so
one file is the source of truth; tests pin this mapping.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Environment a GPU machine needs and a local run must not inherit.
GPU_ONLY_ENV = ("NVIDIA_VISIBLE_DEVICES", "GPU_UUID_FILE")
# evaluation_interval and cooldown of the local scaling policy (see LocalRun.autoscaling). The
# cooldown outlasts a simulated node's start (about 10 s on a loaded laptop) and the
# deployment Nomad runs after a scale (min_healthy_time 10 s), during which it refuses another.
LOCAL_AUTOSCALING = {"evaluation_interval": "2s", "cooldown": "30s"}


@dataclass(frozen=True)
class LocalRun:
    """What the local machine offers in place of images, GPUs and host volumes."""

    python: str                      # the project's virtualenv interpreter
    redis_server: str                # a redis-server binary
    consul_addr: str                 # host:port of the local Consul agent
    output_dir: str                  # shared by gateway and worker (one machine)
    data_dir: str                    # parent of per-allocation scratch (Redis AOF)
    sim_step_ms: float = 50.0
    env: Mapping[str, str] = field(default_factory=dict)  # extra env for every task
    # The autoscaler's timing for a simulated node, which starts in seconds: a minutes-long
    # cooldown (right for GPU machines) would leave a local backlog unanswered.
    autoscaling: Mapping[str, str] = field(default_factory=lambda: dict(LOCAL_AUTOSCALING))


def _service_argv(run: LocalRun, docker: Mapping[str, Any]) -> list[str]:
    # The service image's entrypoint is `comfy-service`; the node image's sidecar names it.
    return [run.python, "-m", "comfy_service.cli", *docker.get("args", [])]


def _sim_argv(run: LocalRun, task: Mapping[str, Any]) -> list[str]:
    # The node image starts one ComfyUI per port in COMFYUI_PORTS; locally one simulator
    # per allocation speaks the same protocol on the first port.
    env = task.get("Env") or {}
    port = str(env.get("COMFYUI_PORTS", "${NOMAD_PORT_comfyui0}")).split(",")[0]
    return [run.python, "-m", "comfyui_sim", "--listen", str(env.get("LISTEN_ADDR", "127.0.0.1")),
            "--port", port, "--base-dir", "${NOMAD_TASK_DIR}/comfyui",
            "--step-ms", f"{run.sim_step_ms:g}"]


def _redis_argv(run: LocalRun, docker: Mapping[str, Any]) -> list[str]:
    args = [str(a) for a in docker.get("args", [])]
    if args and args[0] == "redis-server":
        args = args[1:]
    return [run.redis_server, *("${NOMAD_TASK_DIR}" if a == "/data" else a for a in args)]


def local_argv(run: LocalRun, task: Mapping[str, Any]) -> list[str]:
    """The command a docker task of ours runs locally, chosen by what its image is for."""
    docker = task.get("Config") or {}
    name = str(task["Name"])
    if name == "comfyui":
        return _sim_argv(run, task)
    if name == "redis":
        return _redis_argv(run, docker)
    if docker.get("entrypoint") not in (None, ["comfy-service"]):
        raise ValueError(f"task {name}: no local equivalent for entrypoint {docker['entrypoint']}")
    return _service_argv(run, docker)


def _localize_task(run: LocalRun, task: dict[str, Any]) -> None:
    if task.get("Driver") != "docker":
        return
    argv = local_argv(run, task)
    task["Driver"] = "raw_exec"
    task["Config"] = {"command": argv[0], "args": argv[1:]}
    env = {k: v for k, v in (task.get("Env") or {}).items() if k not in GPU_ONLY_ENV}
    if "CONSUL_HTTP_ADDR" in env:
        env["CONSUL_HTTP_ADDR"] = run.consul_addr
    if "OUTPUT_DIR" in env:
        env["OUTPUT_DIR"] = run.output_dir
    env.update(run.env)
    task["Env"] = env
    task["VolumeMounts"] = None
    resources = task.get("Resources") or {}
    resources["Devices"] = None
    # A laptop has less to give than a GPU machine; Nomad would refuse to place the job.
    resources["CPU"] = min(int(resources.get("CPU") or 100), 200)
    resources["MemoryMB"] = min(int(resources.get("MemoryMB") or 256), 512)
    task["Resources"] = resources


def _localize_scaling(run: LocalRun, group: dict[str, Any]) -> None:
    # The policy is free-form data to Nomad (the autoscaler reads it): only its timing changes.
    policy = (group.get("Scaling") or {}).get("Policy")
    if isinstance(policy, dict):
        policy.update(run.autoscaling)


def localize(job: Mapping[str, Any], run: LocalRun) -> dict[str, Any]:
    """The job as it runs on one machine with raw_exec (pure: returns a new job)."""
    local = copy.deepcopy(dict(job))
    for group in local.get("TaskGroups") or []:
        group["Volumes"] = None
        _localize_scaling(run, group)
        for task in group.get("Tasks") or []:
            _localize_task(run, task)
    return local


def hcl_vars(values: Mapping[str, Any]) -> list[str]:
    """`-var` arguments for `nomad job run`, objects and lists in HCL syntax."""
    return [arg for key, value in values.items() for arg in ("-var", f"{key}={_hcl(value)}")]


def _hcl(value: Any, top: bool = True) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value if top else '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_hcl(v, False)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_hcl(v, False) for v in value) + "]"
    raise TypeError(f"no HCL form for {value!r}")
