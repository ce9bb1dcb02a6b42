"""What a sidecar tells Consul (pure)."""

from __future__ import annotations

import pytest

from node_sidecar.gpu import GpuReading
from node_sidecar.meta import META_KEY, NodeLoad, changed_enough, meta, service_id, tags

GPU = GpuReading(uuid="GPU-abc", name="NVIDIA H100 80GB HBM3", index=0, utilization_pct=41.6,
                 memory_used_mb=20480.4, memory_total_mb=81559.0, temperature_c=40.0,
                 power_w=300.0)


def test_meta_carries_load_and_identity_in_valid_keys() -> None:
    values = meta(NodeLoad(1, 2, GPU), slots=2, weight=1.5,
                  versions={"comfyui": "0.3.64", "sidecar": "0.1.0"})
    assert values["gpu_util"] == "42" and values["vram_used_mb"] == "20480"
    assert values["queue_running"] == "1" and values["queue_pending"] == "2"
    assert values["gpu_uuid"] == "GPU-abc" and values["weight"] == "1.5"
    assert values["comfyui_version"] == "0.3.64"
    assert len(values) <= 64 and all(META_KEY.match(k) for k in values)


def test_without_a_gpu_only_queue_load_is_reported() -> None:
    values = meta(NodeLoad(0, 0, None), slots=2, weight=None, versions={})
    assert "weight" not in values  # not configured: the workers learn it
    assert values["gpu_source"] == "none" and "gpu_util" not in values


def test_service_id_and_tags() -> None:
    assert service_id("gpu-host.example", 3, 8190) == "comfyui-gpu-host-example-gpu3-8190"
    assert tags(NodeLoad(0, 0, GPU), ("txt2img",)) == ["comfyui", "gpu-nvidia-h100-80gb-hbm3",
                                                       "cap-txt2img"]


def _with(**changes: float) -> dict[str, str]:
    gpu = GpuReading(**{**GPU.__dict__, **changes})  # type: ignore[arg-type]
    return meta(NodeLoad(0, 0, gpu), 2, 1.0, {})


@pytest.mark.parametrize("current,expected", [
    (_with(), False),
    (_with(utilization_pct=45.0), False),          # jitter under 10 points
    (_with(utilization_pct=60.0), True),
    (_with(memory_used_mb=21000.0), False),        # under 5 % of VRAM
    (_with(memory_used_mb=30000.0), True),
    (_with(temperature_c=80.0), False),            # reported, but not worth a write
])
def test_changed_enough(current: dict[str, str], expected: bool) -> None:
    assert changed_enough(_with(), current) is expected


def test_a_queue_change_or_first_registration_is_always_worth_it() -> None:
    assert changed_enough(None, _with())
    before = meta(NodeLoad(0, 0, GPU), 2, 1.0, {})
    assert changed_enough(before, meta(NodeLoad(1, 0, GPU), 2, 1.0, {}))
