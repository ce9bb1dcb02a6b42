"""Learned node speeds (actors/speeds.py): table-driven, no servers."""

from __future__ import annotations

import pytest

from actors.speeds import SpeedEstimator

Sample = tuple[str, str, float, float]  # node, kind, seconds, steps


def _learned(samples: list[Sample], nodes: list[str]) -> dict[str, float | None]:
    estimator = SpeedEstimator()
    for sample in samples:
        estimator.observe(*sample)
    return {node: (None if speed is None else round(speed, 3))
            for node, speed in estimator.speeds(nodes).items()}


def _many(node: str, kind: str, seconds: float, steps: float, times: int = 5) -> list[Sample]:
    return [(node, kind, seconds, steps)] * times


@pytest.mark.parametrize("samples,expected", [
    # nothing known: every node is None (the dispatcher takes it as typical)
    ([], {"a": None, "b": None, "c": None}),
    # fewer than MIN_SAMPLES prompts do not count yet
    (_many("a", "txt2img", 2.0, 20, 2), {"a": None, "b": None, "c": None}),
    # 1x / 2x / 4x by time per step: relative to the fleet's median node
    (_many("a", "txt2img", 4.0, 20) + _many("b", "txt2img", 2.0, 20)
     + _many("c", "txt2img", 1.0, 20), {"a": 0.5, "b": 1.0, "c": 2.0}),
    # per step, not per prompt: a node given longer prompts is not slower for it
    (_many("a", "txt2img", 4.0, 40) + _many("b", "txt2img", 1.0, 10),
     {"a": 1.0, "b": 1.0, "c": None}),
    # without steps the prompt is the unit
    (_many("a", "custom", 3.0, 0) + _many("b", "custom", 1.0, 0),
     {"a": 0.667, "b": 2.0, "c": None}),
    # kinds compared with their own kind only: a's SDXL steps are slow work, not a slow node
    (_many("a", "sdxl", 4.0, 20) + _many("b", "sdxl", 4.0, 20)
     + _many("c", "sd15", 1.0, 20) + _many("a", "sd15", 1.0, 20),
     {"a": 1.0, "b": 1.0, "c": 1.0}),
    # bounded: an absurd ratio is capped
    (_many("a", "txt2img", 1000.0, 1) + _many("b", "txt2img", 0.001, 1)
     + _many("c", "txt2img", 0.001, 1), {"a": 0.05, "b": 1.0, "c": 1.0}),
])
def test_speeds(samples: list[Sample], expected: dict[str, float | None]) -> None:
    assert _learned(samples, list(expected)) == expected


def test_one_stall_moves_the_estimate_a_little_and_a_lasting_change_wins() -> None:
    estimator = SpeedEstimator()
    for _ in range(10):
        estimator.observe("a", "txt2img", 2.0, 20)
        estimator.observe("b", "txt2img", 2.0, 20)
    estimator.observe("a", "txt2img", 60.0, 20)  # one prompt stalled on a model load
    assert 0.7 < (estimator.speeds(["a"])["a"] or 0) < 1.0
    for _ in range(30):  # a really slowed down, for good
        estimator.observe("a", "txt2img", 8.0, 20)
        estimator.observe("b", "txt2img", 2.0, 20)
    # (the median of two nodes is their mean: a at 4x b's time -> 0.4 vs the 2.5 mean)
    assert estimator.speeds(["a"])["a"] == pytest.approx(2.5 / 4, rel=0.05)


def test_a_node_that_left_is_forgotten_and_measured_anew() -> None:
    estimator = SpeedEstimator()
    for _ in range(5):
        estimator.observe("a", "txt2img", 1.0, 10)
    estimator.forget("a")
    assert estimator.speeds(["a"]) == {"a": None} and estimator.samples("a") == 0


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_impossible_times_are_ignored(seconds: float) -> None:
    estimator = SpeedEstimator()
    for _ in range(5):
        estimator.observe("a", "txt2img", seconds, 10)
    assert estimator.samples("a") == 0

