"""Several ComfyUI processes on one GPU (pure): how much each one's sampling steps slow down.

ComfyUI is CPU-bound between GPU kernels, so a second or third process on the same GPU adds
throughput without doubling it. Measured with real ComfyUI on one H100 (2026-11-22), total
images/s with k processes sampling at once over one process:

    k            1     2      3
    SD1.5 512²   1.0   1.22   1.50
    SDXL 1024²   1.0   1.19   ~1.3

Between those two sizes the speedup follows the pixel count linearly; outside them it is
clamped to the nearer size. More than three processes gain nothing over three (nobody measured
more, and the GPU is then the bottleneck). Each of k processes steps at speedup(k) / k of its
solo rate, so a solo step of `s` seconds takes `s * k / speedup(k)`.
"""

from __future__ import annotations

SMALL_PIXELS = 512 * 512     # SD1.5 at 512 px
LARGE_PIXELS = 1024 * 1024   # SDXL at 1024 px
# Total throughput with k processes stepping at once, over one process (index k - 1).
SMALL_SPEEDUP = (1.0, 1.22, 1.50)
LARGE_SPEEDUP = (1.0, 1.19, 1.30)


def speedup(stepping: int, pixels: int) -> float:
    """Total throughput of `stepping` processes sampling `pixels`-pixel images at once on one
    GPU, relative to one process alone."""
    k = min(max(stepping, 1), len(SMALL_SPEEDUP))
    small, large = SMALL_SPEEDUP[k - 1], LARGE_SPEEDUP[k - 1]
    where = (pixels - SMALL_PIXELS) / (LARGE_PIXELS - SMALL_PIXELS)
    where = min(max(where, 0.0), 1.0)
    return small + (large - small) * where


def rate(stepping: int, pixels: int) -> float:
    """How fast one of `stepping` processes samples, in solo seconds per second (1.0 alone)."""
    k = max(stepping, 1)
    return speedup(k, pixels) / k


def step_seconds(solo: float, stepping: int, pixels: int) -> float:
    """How long a step that takes `solo` seconds alone takes with `stepping` processes
    sampling at once."""
    return solo / rate(stepping, pixels)
