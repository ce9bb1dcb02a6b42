"""How fast each node is, learned from the prompts it ran (pure).

NODE_WEIGHT tells the dispatcher a node's relative speed by hand. Without it, the worker learns
it: every prompt that succeeds gives a sample, its execution time (ComfyUI's execution_start to
its end, so time spent waiting in the node's queue does not count) per unit of work. The unit
is a sampling step when the prompt reported steps (progress max), else the whole prompt; samples
are kept per workflow kind, since an SDXL step and an SD1.5 step are not the same work.

Per node and kind the estimate is an exponentially weighted mean that forgets slowly (ALPHA);
a sample far from the estimate is clipped to CLIP times it first, so one stall (a model load,
a swap) moves it a little, while a lasting change still wins within a few dozen prompts.

A node's speed is relative to the fleet: for each kind it has enough samples of, the fleet's
median time per unit divided by its own; its speed is the median of those ratios. A node not
known yet is taken as typical (1.0), so it gets work and is measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

ALPHA = 0.2        # weight of a new sample (about the last ten prompts count)
CLIP = 3.0         # a sample is first bounded to [estimate / CLIP, estimate * CLIP]
MIN_SAMPLES = 3    # samples of a kind before a node's estimate counts
MIN_SPEED, MAX_SPEED = 0.05, 20.0


@dataclass
class _Estimate:
    seconds_per_unit: float
    samples: int = 1


@dataclass
class SpeedEstimator:
    alpha: float = ALPHA
    clip: float = CLIP
    min_samples: int = MIN_SAMPLES
    _estimates: dict[tuple[str, str], _Estimate] = field(default_factory=dict)

    def observe(self, node: str, kind: str, seconds: float, steps: float = 0) -> None:
        """One prompt that `node` ran to success in `seconds` (execution only)."""
        if seconds <= 0:
            return
        per_unit = seconds / steps if steps > 0 else seconds
        key = (node, f"{kind}/step" if steps > 0 else f"{kind}/prompt")
        known = self._estimates.get(key)
        if known is None:
            self._estimates[key] = _Estimate(per_unit)
            return
        bounded = min(max(per_unit, known.seconds_per_unit / self.clip),
                      known.seconds_per_unit * self.clip)
        known.seconds_per_unit += self.alpha * (bounded - known.seconds_per_unit)
        known.samples += 1

    def forget(self, node: str) -> None:
        """A node left: its samples go (a new node under the same name is measured anew)."""
        for key in [k for k in self._estimates if k[0] == node]:
            del self._estimates[key]

    def speeds(self, nodes: Iterable[str]) -> dict[str, float | None]:
        """Relative speed of each node (fleet median = 1.0); None while not known yet."""
        settled = {key: est.seconds_per_unit for key, est in self._estimates.items()
                   if est.samples >= self.min_samples}
        by_kind: dict[str, list[float]] = {}
        for (_, kind), per_unit in settled.items():
            by_kind.setdefault(kind, []).append(per_unit)
        typical = {kind: statistics.median(values) for kind, values in by_kind.items()}
        result: dict[str, float | None] = {}
        for node in nodes:
            ratios = [typical[kind] / per_unit for (name, kind), per_unit in settled.items()
                      if name == node]
            result[node] = (min(MAX_SPEED, max(MIN_SPEED, statistics.median(ratios)))
                            if ratios else None)
        return result

    def samples(self, node: str) -> int:
        return sum(est.samples for (name, _), est in self._estimates.items() if name == node)
