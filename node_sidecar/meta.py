"""What a node tells Consul about itself (pure): service id, tags, Meta, and when to update.

Consul Meta keys allow letters, digits, '-' and '_' only, at most 64 pairs, values <= 512
chars. Load travels in Meta (re-registering the same service id), not in a TTL check's
output: Consul syncs an output change without a status change only every 5 minutes. How soon a
change is re-registered depends on who reads it (`reregister_due`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from node_sidecar.gpu import GpuReading

META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class NodeLoad:
    queue_running: int
    queue_pending: int
    gpu: GpuReading | None


def service_id(host: str, gpu_index: int, port: int) -> str:
    """Stable per node and GPU, so a restart re-registers the same entry."""
    safe_host = re.sub(r"[^A-Za-z0-9-]", "-", host)
    return f"comfyui-{safe_host}-gpu{gpu_index}-{port}"


def tags(load: NodeLoad, capabilities: tuple[str, ...]) -> list[str]:
    found = ["comfyui"]
    if load.gpu is not None:
        found.append("gpu-" + re.sub(r"[^a-z0-9]+", "-", load.gpu.name.lower()).strip("-"))
    return found + [f"cap-{c}" for c in capabilities]


def meta(load: NodeLoad, slots: int, weight: float | None, versions: Mapping[str, str],
         metrics_port: int = 0) -> dict[str, str]:
    gpu = load.gpu
    values = {
        "queue_running": str(load.queue_running), "queue_pending": str(load.queue_pending),
        "slots": str(slots), "gpu_source": "none" if gpu is None else "gpu",
        **{f"{name}_version": version for name, version in versions.items()},
    }
    if weight is not None:  # configured by hand; without it the workers learn the speed
        values["weight"] = f"{weight:g}"
    if metrics_port:  # where Prometheus scrapes this sidecar (found through Consul)
        values["metrics_port"] = str(metrics_port)
    if gpu is not None:
        values.update({
            "gpu_uuid": gpu.uuid, "gpu_name": gpu.name[:200], "gpu_index": str(gpu.index),
            "gpu_util": f"{gpu.utilization_pct:.0f}",
            "vram_used_mb": f"{gpu.memory_used_mb:.0f}",
            "vram_total_mb": f"{gpu.memory_total_mb:.0f}"})
        if gpu.temperature_c is not None:
            values["gpu_temp_c"] = f"{gpu.temperature_c:.0f}"
        if gpu.power_w is not None:
            values["gpu_power_w"] = f"{gpu.power_w:.0f}"
    assert len(values) <= 64 and all(META_KEY.match(k) for k in values)
    return values


# Re-registration is a Raft write, and it wakes every worker's blocking query on the service,
# which answers with the whole fleet: with 1,000 nodes, one node's write is a ~2 MB JSON answer
# per watcher. So what a node reports is sorted by how soon a change must reach Consul:
IDENTITY = "identity"  # anything not below (slots, weight, versions, GPU uuid): at once
LOAD = "load"          # GPU load past a threshold: the dispatcher's gpu_util and VRAM terms
STALE = "stale"        # figures no worker reads (queue, temperature, power): ride along
LOAD_KEYS = frozenset({"gpu_util", "vram_used_mb"})
# The workers count slots in Redis; these are for people (Consul UI) and /metrics has them live.
RIDE_ALONG_KEYS = frozenset({"queue_running", "queue_pending", "gpu_temp_c", "gpu_power_w"})


@dataclass(frozen=True)
class MetaPolicy:
    """How soon after the last registration each kind of change is written (seconds)."""

    identity_s: float = 2.0
    load_s: float = 10.0
    stale_s: float = 60.0
    util_points: float = 10.0
    vram_fraction: float = 0.05


def change_kind(previous: Mapping[str, str] | None, current: Mapping[str, str],
                policy: MetaPolicy = MetaPolicy()) -> str | None:
    """The most urgent kind of change from `previous` to `current`, or None (pure)."""
    if previous is None or set(previous) != set(current):
        return IDENTITY
    kind = None
    for key, value in current.items():
        if previous[key] == value:
            continue
        if key in RIDE_ALONG_KEYS:
            kind = kind or STALE
        elif key in LOAD_KEYS:
            if _moved(key, previous, current, policy):
                kind = LOAD
            else:
                kind = kind or STALE  # jitter: shown when something else is written
        else:
            return IDENTITY
    return kind


def _moved(key: str, previous: Mapping[str, str], current: Mapping[str, str],
           policy: MetaPolicy) -> bool:
    try:
        delta = abs(float(current[key]) - float(previous[key]))
        if key == "gpu_util":
            return delta >= policy.util_points
        total = float(current.get("vram_total_mb", "0")) or 1.0
        return delta / total >= policy.vram_fraction
    except ValueError:
        return True


def reregister_due(previous: Mapping[str, str] | None, current: Mapping[str, str],
                   since_s: float, policy: MetaPolicy = MetaPolicy()) -> bool:
    """Worth a re-registration now, `since_s` after the last one (pure): identity changes
    within `identity_s`, GPU load past a threshold within `load_s`, anything else that differs
    within `stale_s` (so the Consul UI is never more than a minute behind)."""
    kind = change_kind(previous, current, policy)
    wait = {IDENTITY: policy.identity_s, LOAD: policy.load_s, STALE: policy.stale_s}
    return kind is not None and since_s >= wait[kind]


def ttl_pass_due(since_s: float, ttl_s: float, probe_interval_s: float) -> bool:
    """Whether a passing TTL check needs refreshing, `since_s` after it was last passed (pure).

    Three refreshes per TTL keep it passing through one lost update; more only costs the agent
    an HTTP request each (a status or output change, which is sent at once, is what reaches
    the servers). A failure is reported at once, never through this."""
    return since_s >= max(probe_interval_s, ttl_s / 3) - 0.05
