"""Nodes answering the same /object_info share one parsed copy; another answer its own."""

from __future__ import annotations

import asyncio
import json

import httpx

from actors.comfy_client import ComfyClient


def _node(info: dict[str, object]) -> ComfyClient:
    body = json.dumps(info).encode()
    return ComfyClient("http://node.test", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=body)))


def test_the_same_answer_is_parsed_once_and_shared_and_a_different_one_is_not() -> None:
    async def scenario() -> None:
        first, second = _node({"KSampler": {"a": 1}}), _node({"KSampler": {"a": 1}})
        other = _node({"KSampler": {"a": 2}})
        one, two, three = [await c.object_info() for c in (first, second, other)]
        assert one is two and one == {"KSampler": {"a": 1}}
        assert three == {"KSampler": {"a": 2}} and three is not one
        for client in (first, second, other):
            await client.close()
    asyncio.run(scenario())
