"""What a node tells Consul about itself (pure): service id, tags, Meta, and when to update.

Consul Meta keys allow letters, digits, '-' and '_' only, at most 64 pairs, values <= 512
chars. Load travels in Meta (re-registering the same service id), not in a TTL check's
output: Consul syncs an output change without a status change only every 5 minutes.
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


def changed_enough(previous: Mapping[str, str] | None, current: Mapping[str, str],
                   util_points: float = 10.0, vram_fraction: float = 0.05) -> bool:
    """Worth a re-registration: queue figures or identity changed, or GPU load moved past a
    threshold. Small jitter is not, to spare Consul's Raft log."""
    if previous is None or set(previous) != set(current):
        return True
    for key, value in current.items():
        if key == "gpu_util":
            if abs(float(value) - float(previous[key])) >= util_points:
                return True
        elif key == "vram_used_mb":
            total = float(current.get("vram_total_mb", "0")) or 1.0
            if abs(float(value) - float(previous[key])) / total >= vram_fraction:
                return True
        elif key not in ("gpu_temp_c", "gpu_power_w") and previous[key] != value:
            return True
    return False
