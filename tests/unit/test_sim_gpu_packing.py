"""The shared-GPU time model (pure): speedups per number of samplers and image size."""

from __future__ import annotations

import pytest

from comfyui_sim import packing

SD15, SDXL = 512 * 512, 1024 * 1024
MIDDLE = (SD15 + SDXL) // 2


@pytest.mark.parametrize("stepping,pixels,expected", [
    (1, SD15, 1.0), (2, SD15, 1.22), (3, SD15, 1.50),        # SD1.5 512 px, measured
    (1, SDXL, 1.0), (2, SDXL, 1.19), (3, SDXL, 1.30),        # SDXL 1024 px, measured
    (2, MIDDLE, 1.205), (3, MIDDLE, 1.40),                    # halfway in pixels: halfway
    (2, 256 * 256, 1.22), (3, 64 * 64, 1.50),                # smaller than SD1.5: clamped
    (2, 2048 * 2048, 1.19), (3, 1536 * 1536, 1.30),          # larger than SDXL: clamped
    (4, SD15, 1.50), (8, SDXL, 1.30),                         # past 3 processes: no more gain
    (0, SDXL, 1.0), (-1, SD15, 1.0),                          # nobody counted: as alone
])
def test_speedup_follows_the_measured_table(stepping: int, pixels: int, expected: float,
                                            ) -> None:
    assert packing.speedup(stepping, pixels) == pytest.approx(expected)


@pytest.mark.parametrize("solo,stepping,pixels,expected", [
    (0.05, 1, SDXL, 0.05),
    (0.05, 2, SDXL, 0.05 * 2 / 1.19),
    (0.05, 3, SDXL, 0.05 * 3 / 1.30),
    (0.10, 2, SD15, 0.10 * 2 / 1.22),
    (0.10, 3, SD15, 0.10 * 3 / 1.50),
    (0.10, 4, SD15, 0.10 * 4 / 1.50),
    (0.0, 3, SD15, 0.0),
])
def test_a_step_stretches_by_samplers_over_speedup(solo: float, stepping: int, pixels: int,
                                                    expected: float) -> None:
    assert packing.step_seconds(solo, stepping, pixels) == pytest.approx(expected)


@pytest.mark.parametrize("pixels", [SD15, MIDDLE, SDXL])
def test_total_throughput_of_k_samplers_is_the_speedup(pixels: int) -> None:
    for k in (1, 2, 3):
        total = k / packing.step_seconds(1.0, k, pixels)
        assert total == pytest.approx(packing.speedup(k, pixels))
        assert packing.rate(k, pixels) <= 1.0


def test_speedup_grows_with_samplers_and_shrinks_with_size() -> None:
    for pixels in (SD15, MIDDLE, SDXL):
        gains = [packing.speedup(k, pixels) for k in (1, 2, 3)]
        assert gains == sorted(gains)
    for k in (2, 3):
        assert packing.speedup(k, SD15) > packing.speedup(k, MIDDLE) > packing.speedup(k, SDXL)
