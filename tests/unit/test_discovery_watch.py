"""What a worker's Consul watch passes on: only news, and at a bounded pace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors import discovery
from actors.discovery import DiscoveredNode, same_view


def _node(name: str = "a", availability: str = "ready", **meta: str) -> DiscoveredNode:
    return DiscoveredNode(name, f"http://{name}:8188", {"gpu_util": "10", "slots": "2", **meta},
                          availability)


@pytest.mark.parametrize("new,same", [
    ([_node()], True),
    ([_node(queue_running="1", queue_pending="3")], True),   # nobody reads the queue figures
    ([_node(gpu_temp_c="80", gpu_power_w="400")], True),
    ([_node(gpu_util="90")], False),                          # the dispatcher's GPU term
    ([_node(vram_used_mb="9000")], False),
    ([_node(weight="2")], False),
    ([_node(availability="draining")], False),
    ([_node("b")], False),
    ([_node(), _node("b")], False),
    ([], False),
])
def test_same_view(new: list[DiscoveredNode], same: bool) -> None:
    assert same_view([_node()], new) is same


def test_no_view_yet_is_never_the_same() -> None:
    assert not same_view(None, [])


def _entry(queue: str, util: str = "10") -> dict[str, Any]:
    return {"Node": {"Address": "10.0.0.9"}, "Checks": [],
            "Service": {"ID": "a", "Address": "10.0.0.1", "Port": 8188,
                        "Meta": {"gpu_util": util, "queue_pending": queue}}}


class FakeHealth:
    """Consul answering at once each time, with the given entries (a busy fleet)."""

    def __init__(self, answers: list[list[dict[str, Any]]]) -> None:
        self.answers = answers
        self.asked: list[float] = []

    async def service(self, service: str, index: str | None, wait: str
                      ) -> tuple[str, list[dict[str, Any]]]:
        self.asked.append(asyncio.get_running_loop().time())
        if not self.answers:
            await asyncio.Event().wait()  # nothing more changes: block until cancelled
        return str(len(self.asked)), self.answers.pop(0)


class FakeClient:
    def __init__(self, health: FakeHealth) -> None:
        self.health = health

    async def close(self) -> None:
        pass


def test_a_busy_fleet_is_asked_at_a_bounded_pace_and_only_news_is_passed_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Consul answers at once four times: a new node, its queue twice, then its GPU load
    health = FakeHealth([[_entry("0")], [_entry("1")], [_entry("2")], [_entry("2", util="90")]])
    monkeypatch.setattr(discovery, "async_client", lambda *_: FakeClient(health))
    monkeypatch.setattr(discovery, "MIN_QUERY_INTERVAL_S", 0.1)
    views: list[list[DiscoveredNode]] = []

    async def listener(nodes: list[DiscoveredNode]) -> None:
        views.append(nodes)

    async def watch() -> None:
        task = asyncio.create_task(discovery.watch_consul("127.0.0.1:8500", "comfyui", None,
                                                          listener))
        while len(health.asked) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # When the worker watches
    asyncio.run(watch())
    # Then it was told twice (the node, its GPU load), not four times
    assert [view[0].meta["gpu_util"] for view in views] == ["10", "90"]
    # And it asked no more often than every MIN_QUERY_INTERVAL_S
    gaps = [b - a for a, b in zip(health.asked, health.asked[1:], strict=False)]
    assert min(gaps) >= 0.09
