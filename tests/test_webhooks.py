"""Webhooks end to end: a real gateway, two workers, Redis and a simulated node deliver a task's
events to a receiver on loopback, which checks every signature with standardwebhooks."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from standardwebhooks.webhooks import Webhook

from tests.support.processes import wait_until
from tests.support.service import Stack, slow_body, txt2img_body
from tests.support.webhook_receiver import Received, Receiver

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
TIMEOUT_S = 5.0  # WEBHOOK_TIMEOUT_S


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("webhooks"), nodes=1, step_ms=20, workers=2, env={
        "API_KEYS": f"{ALICE},{BOB}", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "WEBHOOK_RETRY_FOR_S": "4", "WEBHOOK_BACKOFF_S": "0.1",
        "WEBHOOK_TIMEOUT_S": str(TIMEOUT_S), "WEBHOOK_SECRET": "server-secret-for-tests"})
    try:
        yield stack
    finally:
        stack.stop()


def _secret(stack: Stack, key: str = ALICE) -> str:
    answer = stack.http.get("/api/v1/webhook-secret", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    secret: str = answer.json()["secret"]
    return secret


def _with_webhook(url: str, events: list[str] | None = None,
                  body: dict[str, Any] | None = None) -> dict[str, Any]:
    hook: dict[str, Any] = {"url": url, **({"events": events} if events else {})}
    return {**(body or txt2img_body()), "webhook": hook}


def _stream_events(stack: Stack, task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event the task's stream holds: (id, event, data), as GET .../events sends them."""
    with httpx.Client(base_url=stack.url, timeout=30) as client, connect_sse(
            client, "GET", f"/api/v1/tasks/{task_id}/events",
            headers={"Authorization": f"Bearer {ALICE}", "Last-Event-ID": "0-0"}) as source:
        return [(e.id, e.event, json.loads(e.data)) for e in source.iter_sse()]


def _delivered(received: list[Received], secret: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Each request verified (it raises otherwise), as (stream id, event, data)."""
    found = []
    for request in received:
        message = Webhook(secret).verify(request.body, request.headers)
        stream_id = request.headers["webhook-id"].rpartition("_")[2]
        found.append((stream_id, message["type"].removeprefix("task."), message["data"]))
    return found


def _webhook_of(stack: Stack, task_id: str) -> dict[str, Any]:
    webhook: dict[str, Any] = stack.task(task_id)["webhook"]
    return webhook


def test_a_receiver_gets_each_event_once_in_order_and_signed(stack: Stack,
                                                            receiver: Receiver) -> None:
    # Given a task whose webhook wants every event
    path = "/ok/every-event"
    task_id = stack.submit(_with_webhook(receiver.url(path), ["state", "progress", "outputs",
                                                              "end"], txt2img_body(steps=8)))
    # When it runs to its end
    assert stack.wait_task(task_id)["status"] == "succeeded"
    wait_until(lambda: any(b'"task.end"' in r.body for r in receiver.received(path)), 20,
               "the end event to be delivered")
    # Then the receiver got exactly the task's events, in the stream's order, each signed
    # with the key's secret, once (two workers deliver, one at a time per task)
    delivered = _delivered(receiver.received(path), _secret(stack))
    expected = [(i, name, {"task_id": task_id, **data})
                for i, name, data in _stream_events(stack, task_id)]
    assert delivered == expected
    assert [name for _, name, _ in delivered][-2:] == ["outputs", "end"]
    assert "progress" in [name for _, name, _ in delivered]
    # And the record says so, without its secret
    webhook = wait_until(lambda: (w := _webhook_of(stack, task_id))["delivered"] == len(
        delivered) and w, 10, "the record to count the deliveries")
    assert webhook == {"url": receiver.url(path), "events": ["state", "progress", "outputs", "end"],
                       "delivered": len(delivered), "given_up": 0, "attempts": len(delivered),
                       "last_status": 200, "last_error": None}
    assert "whsec_" not in json.dumps(stack.task(task_id))


def test_a_failing_receiver_gets_the_same_event_again(stack: Stack, receiver: Receiver) -> None:
    # Given a receiver that answers 500 twice, then 200
    path = "/fail/2/retried"
    task_id = stack.submit(_with_webhook(receiver.url(path), ["end"]))
    assert stack.wait_task(task_id)["status"] == "succeeded"
    # When its deliveries are retried
    webhook = wait_until(lambda: (w := _webhook_of(stack, task_id))["delivered"] == 1 and w, 20,
                         "the end event to be delivered after two failures")
    # Then it got the end event three times: same webhook-id, same body, each signed
    received = receiver.received(path)
    assert len(received) == 3
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1
    assert {name for _, name, _ in _delivered(received, _secret(stack))} == {"end"}
    assert (webhook["attempts"], webhook["last_status"], webhook["last_error"]) == (
        3, 200, "HTTP 500")


def test_a_receiver_that_never_answers_does_not_hold_up_its_task(stack: Stack,
                                                                 receiver: Receiver) -> None:
    # Given a receiver that holds every request open
    path = "/hang/silent"
    task_id = stack.submit(_with_webhook(receiver.url(path), body=slow_body(30)))
    first = wait_until(lambda: receiver.received(path), 20, "the first delivery to start")[0]
    # When the task runs, then it ends while that request is still waiting for an answer
    record = stack.wait_task(task_id)
    assert record["status"] == "succeeded"
    finished = dt.datetime.fromisoformat(record["finished_at"].replace("Z", "+00:00"))
    assert finished.timestamp() < first.at + TIMEOUT_S
    assert record["webhook"]["delivered"] == 0
    # And the delivery gave up on that request after WEBHOOK_TIMEOUT_S
    webhook = wait_until(lambda: (w := _webhook_of(stack, task_id))["attempts"] >= 1 and w,
                         TIMEOUT_S + 15, "the hung attempt to be recorded")
    assert webhook["last_status"] is None
    assert webhook["last_error"] == f"no answer within {TIMEOUT_S:g}s"


def test_redirects_are_not_followed_and_failures_are_given_up_in_bounded_time(
        stack: Stack, receiver: Receiver) -> None:
    # Given a receiver that answers every request with a redirect
    path = "/redirect/moved"
    task_id = stack.submit(_with_webhook(receiver.url(path), ["state", "end"]))
    assert stack.wait_task(task_id)["status"] == "succeeded"
    events = [name for _, name, _ in _stream_events(stack, task_id) if name in ("state", "end")]
    # When every attempt fails for longer than WEBHOOK_RETRY_FOR_S (4 s)
    webhook = wait_until(lambda: (w := _webhook_of(stack, task_id))["given_up"] == len(events)
                         and w, 30, "every event of the task to be given up")
    # Then each event was given up in turn (the end one too), the redirect never followed
    assert (webhook["delivered"], webhook["last_status"]) == (0, 302)
    assert webhook["attempts"] == len(receiver.received(path)) >= 3
    assert receiver.received("/ok/moved") == []


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "[::1]", "127.0.0.2",
                                  "0.0.0.0", "224.0.0.1"])
def test_a_webhook_to_a_private_address_is_refused(stack: Stack, host: str) -> None:
    answer = stack.http.post("/api/v1/generate",
                             json=_with_webhook(f"http://{host}:8080/hook"))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert [f["field"] for f in error["details"]["fields"]] == ["webhook.url"]


def test_an_allowlisted_address_is_accepted(stack: Stack, receiver: Receiver) -> None:
    answer = stack.http.post("/api/v1/generate",
                             json=_with_webhook(receiver.url("/ok/allowlisted"), ["end"]))
    assert answer.status_code == 202, answer.text
    assert stack.wait_task(answer.json()["task_id"])["status"] == "succeeded"


def test_each_key_fetches_its_own_stable_secret(stack: Stack) -> None:
    alice, bob = _secret(stack, ALICE), _secret(stack, BOB)
    assert alice.startswith("whsec_") and bob.startswith("whsec_") and alice != bob
    assert _secret(stack, ALICE) == alice
    assert httpx.get(f"{stack.url}/api/v1/webhook-secret").status_code == 401
