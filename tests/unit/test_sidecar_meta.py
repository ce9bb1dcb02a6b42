"""What a sidecar tells Consul (pure)."""

from __future__ import annotations

import pytest

from node_sidecar.gpu import GpuReading
from node_sidecar.meta import (
    IDENTITY,
    LOAD,
    META_KEY,
    STALE,
    MetaPolicy,
    NodeLoad,
    change_kind,
    meta,
    reregister_due,
    service_id,
    tags,
    ttl_pass_due,
)

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


def _with(running: int = 0, pending: int = 0, **changes: float) -> dict[str, str]:
    gpu = GpuReading(**{**GPU.__dict__, **changes})  # type: ignore[arg-type]
    return meta(NodeLoad(running, pending, gpu), 2, 1.0, {})


@pytest.mark.parametrize("current,expected", [
    (_with(), None),
    (_with(utilization_pct=45.0), STALE),          # jitter under 10 points: shown, not urgent
    (_with(utilization_pct=60.0), LOAD),
    (_with(memory_used_mb=21000.0), STALE),        # under 5 % of VRAM
    (_with(memory_used_mb=30000.0), LOAD),
    (_with(temperature_c=80.0), STALE),            # reported, but not worth a write of its own
    (_with(running=1, pending=3), STALE),          # the workers count slots in Redis
    (_with(running=1, utilization_pct=90.0), LOAD),
    (_with(uuid="GPU-other"), IDENTITY),
    (_with(utilization_pct=90.0, uuid="GPU-other"), IDENTITY),
    (meta(NodeLoad(0, 0, GPU), 4, 1.0, {}), IDENTITY),  # slots
    (meta(NodeLoad(0, 0, GPU), 2, 1.0, {"comfyui": "0.3.65"}), IDENTITY),  # a new key
])
def test_change_kind(current: dict[str, str], expected: str | None) -> None:
    assert change_kind(_with(), current) == expected


def test_a_first_registration_is_an_identity_change() -> None:
    assert change_kind(None, _with()) == IDENTITY


POLICY = MetaPolicy(identity_s=2.0, load_s=10.0, stale_s=60.0)


@pytest.mark.parametrize("current,since_s,expected", [
    (_with(), 3600.0, False),                       # nothing changed: never
    (_with(uuid="GPU-other"), 1.0, False),          # identity: not within 2 s of the last
    (_with(uuid="GPU-other"), 2.0, True),
    (_with(utilization_pct=90.0), 9.0, False),      # GPU load past a threshold: 10 s
    (_with(utilization_pct=90.0), 10.0, True),
    (_with(running=1, pending=1), 2.0, False),      # queue figures: with a minute's delay
    (_with(running=1, pending=1), 59.0, False),
    (_with(running=1, pending=1), 60.0, True),
])
def test_reregister_due(current: dict[str, str], since_s: float, expected: bool) -> None:
    assert reregister_due(_with(), current, since_s, POLICY) is expected


def test_a_node_busy_every_two_seconds_is_written_once_a_minute() -> None:
    # Given a node whose queue changes at every probe (2 s tasks) and whose GPU does not move
    previous, at, writes = _with(), 0.0, 0
    # When a sidecar probes it every second for ten minutes
    for second in range(1, 601):
        current = _with(running=1, pending=second % 2)
        if reregister_due(previous, current, second - at, POLICY):
            previous, at, writes = current, float(second), writes + 1
    # Then Consul hears of it about once a minute, not every other second
    assert 9 <= writes <= 10


@pytest.mark.parametrize("since_s,ttl_s,probe_s,expected", [
    (1.0, 5.0, 1.0, False),   # passed a probe ago: a 5 s TTL has time
    (2.0, 5.0, 1.0, True),    # every other probe: three refreshes per TTL at most
    (0.5, 2.0, 0.5, False),   # the tests' 2 s TTL probed every 0.5 s
    (1.0, 2.0, 0.5, True),
    (1.0, 1.0, 1.0, True),    # a TTL as short as the probe interval: every probe
])
def test_ttl_pass_due(since_s: float, ttl_s: float, probe_s: float, expected: bool) -> None:
    assert ttl_pass_due(since_s, ttl_s, probe_s) is expected
