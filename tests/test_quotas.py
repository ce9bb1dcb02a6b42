"""Per-key rate limits and caps on tasks in flight, enforced across two gateway processes
sharing one Redis (real gateway processes, worker, Redis and a simulated node)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import ManagedProcess, free_port, wait_until
from tests.support.service import Stack, txt2img_body

LIMITED, CAPPED, OTHER, ADMIN = ("limited-key-000", "capped-key-111", "other-key-222",
                                 "admin-key-333")


class TwoGateways:
    def __init__(self, stack: Stack, second: ManagedProcess, url: str) -> None:
        self.stack = stack
        self.second = second
        self.clients = [httpx.Client(base_url=stack.url, timeout=10),
                        httpx.Client(base_url=url, timeout=10)]

    def call(self, n: int, method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
        """Request number n goes to gateway n % 2: both processes take part."""
        return self.clients[n % 2].request(method, path, headers={
            "Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGateways]:
    # (the stack's own helper requests use the first key: the admin one, never limited)
    env = {"API_KEYS": f"{ADMIN},{LIMITED},{CAPPED},{OTHER}", "ADMIN_API_KEYS": ADMIN,
           # defaults for every key: 0.2 request/s with a bucket of 6; the capped key instead
           # has no rate limit and at most 2 tasks queued or running
           "RATE_LIMIT_PER_S": "0.2", "RATE_LIMIT_BURST": "6",
           "API_KEY_LIMITS": f"{CAPPED}=0//2"}
    stack = Stack(tmp_path_factory.mktemp("quotas"), nodes=1, step_ms=20, env=env)
    port = free_port()
    second = stack._spawn("gateway", "gateway2", {"API_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 20,
               "the second gateway", transient=lambda exc: isinstance(exc, httpx.HTTPError))
    both = TwoGateways(stack, second, url)
    yield both
    for client in both.clients:
        client.close()
    second.stop()
    stack.stop()


def test_the_rate_limit_is_one_budget_across_gateway_processes(gateways: TwoGateways) -> None:
    # Given a key with a bucket of 6 refilled at 0.2/s, when it sends 16 requests alternately
    # to two gateway processes
    answers = [gateways.call(n, "GET", "/api/v1/workflows", LIMITED) for n in range(16)]
    allowed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    # Then about the bucket passes (one more may refill while the requests go out), not 6 per
    # process, and the rest are 429 rate_limited with a Retry-After
    assert 6 <= len(allowed) <= 7 and len(allowed) + len(refused) == 16
    assert {a.json()["error"]["code"] for a in refused} == {"rate_limited"}
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    # And another key, and an admin key, are not affected
    assert gateways.call(0, "GET", "/api/v1/workflows", OTHER).status_code == 200
    assert all(gateways.call(n, "GET", "/api/v1/workflows", ADMIN).status_code == 200
               for n in range(20))


def test_tasks_in_flight_are_capped_per_key_across_processes(gateways: TwoGateways) -> None:
    # Given a key allowed 2 tasks queued or running at once, with 2 slow tasks in flight
    body = txt2img_body(steps=100)
    first = [gateways.call(n, "POST", "/api/v1/generate", CAPPED, json=body) for n in range(2)]
    assert [a.status_code for a in first] == [202, 202]
    # When it submits a third, through either process, with an Idempotency-Key
    third = gateways.call(1, "POST", "/api/v1/generate", CAPPED, json=txt2img_body(seed=3),
                          headers={"Idempotency-Key": "third"})
    # Then it is refused with 429 quota_exceeded and a Retry-After; nothing was stored
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "quota_exceeded"
    assert int(third.headers["retry-after"]) >= 1
    # And once the first two have finished, the same request is accepted as a new task
    for answer in first:
        task_id = answer.json()["task_id"]
        wait_until(lambda: gateways.call(0, "GET", f"/api/v1/tasks/{task_id}", CAPPED)  # noqa: B023
                   .json()["status"] == "succeeded", 60, "the first tasks to finish")
    again = gateways.call(0, "POST", "/api/v1/generate", CAPPED, json=txt2img_body(seed=3),
                          headers={"Idempotency-Key": "third"})
    assert again.status_code == 202, again.text
    assert again.json()["task_id"] not in {a.json()["task_id"] for a in first}
