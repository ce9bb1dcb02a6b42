"""Webhooks, the pure parts: the request field, the address policy, the retry schedule, what a
delivery sends and how the record tallies it (comfy_service/webhook_policy.py)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from typing import Any

import jsonschema
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from actors.tasks import QUEUED, TaskRecord
from actors.webhooks import Cursor
from comfy_service.errors import ValidationFailed
from comfy_service.templates import load_templates
from comfy_service.webhook_policy import (
    DEFAULT_EVENTS,
    MAX_BACKOFF_S,
    Allowlist,
    Attempt,
    WebhookSpec,
    address_refusal,
    derive_secret,
    gives_up,
    initial_status,
    message_id,
    parse_webhook,
    payload,
    refusal,
    retry_delay_s,
    signed_headers,
    tallied,
)
from gateway.generate import GenerateRequest, new_record, parse_generate
from gateway.openapi import build_document

ip = ipaddress.ip_address


# --- the request field -------------------------------------------------------------------------

def test_a_webhook_with_only_a_url_gets_every_event_but_progress() -> None:
    assert parse_webhook({"url": "https://example.com/hook"}) == (
        WebhookSpec("https://example.com/hook", DEFAULT_EVENTS), [])
    assert "progress" not in DEFAULT_EVENTS


def test_events_are_kept_in_their_canonical_order() -> None:
    spec, errors = parse_webhook({"url": "http://example.com", "events": ["end", "progress"]})
    assert errors == [] and spec is not None and spec.events == ("progress", "end")


@pytest.mark.parametrize("value,field", [
    ("https://example.com", "webhook"),
    ({"url": "https://example.com", "secret": "x"}, "webhook.secret"),
    ({}, "webhook.url"),
    ({"url": 5}, "webhook.url"),
    ({"url": "ftp://example.com/x"}, "webhook.url"),
    ({"url": "file:///etc/passwd"}, "webhook.url"),
    ({"url": "https:///no-host"}, "webhook.url"),
    ({"url": "https://user:pw@example.com/"}, "webhook.url"),
    ({"url": "https://example.com:99999/"}, "webhook.url"),
    ({"url": "https://example.com/a b"}, "webhook.url"),
    ({"url": "https://example.com/" + "a" * 2048}, "webhook.url"),
    ({"url": "https://example.com", "events": []}, "webhook.events"),
    ({"url": "https://example.com", "events": ["done"]}, "webhook.events"),
    ({"url": "https://example.com", "events": ["end", "end"]}, "webhook.events"),
    ({"url": "https://example.com", "events": "end"}, "webhook.events"),
])
def test_a_malformed_webhook_names_its_field(value: Any, field: str) -> None:
    spec, errors = parse_webhook(value)
    assert spec is None and [e.field for e in errors] == [field]


def test_generate_takes_a_webhook_only_where_the_caller_handles_it() -> None:
    body = {"workflow_json": {}, "webhook": {"url": "http://example.com"}}
    with pytest.raises(ValidationFailed) as refused:  # a batch's items, say
        parse_generate(body, {}, {}, lambda limit: 0, "t")
    assert refused.value.details == {"fields": [{"field": "webhook", "message": "unknown field"}]}
    with pytest.raises(ValidationFailed) as refused:
        parse_generate({**body, "webhook": {"url": "gopher://x"}}, {}, {}, lambda limit: 0, "t",
                       webhooks=True)
    assert [f["field"] for f in refused.value.details["fields"]] == ["webhook.url"]


def test_a_record_shows_its_webhook_but_never_its_secret() -> None:
    request = GenerateRequest(None, None, {}, 0, None, WebhookSpec("http://h/x", ("end",)))
    record = new_record(request, "t", None, 1, None, "whsec_c2VjcmV0")
    assert record.public()["webhook"] == {"url": "http://h/x", "events": ["end"],
                                          "delivered": 0, "given_up": 0, "attempts": 0,
                                          "last_status": None, "last_error": None}
    assert "whsec_" not in json.dumps(record.public()) and "whsec_" not in repr(record)
    assert TaskRecord.from_dict(record.to_dict()).webhook_secret == "whsec_c2VjcmV0"
    plain = TaskRecord("t", QUEUED, {}, "2026-01-01T00:00:00Z")
    assert "webhook" not in plain.public()


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address,reason", [
    ("8.8.8.8", None),
    ("2606:4700:4700::1111", None),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fd12::1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.1.2.3", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("100.64.0.1", "not publicly routable"),     # carrier-grade NAT
    ("::ffff:127.0.0.1", "loopback"),            # IPv4-mapped
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("64:ff9b::a00:1", "private"),               # NAT64 of 10.0.0.1
    ("2002:a00:1::1", "private"),                # 6to4 of 10.0.0.1
    ("255.255.255.255", "private"),
])
def test_address_policy(address: str, reason: str | None) -> None:
    assert address_refusal(ip(address)) == reason


def test_a_host_is_refused_when_any_of_its_addresses_is() -> None:
    allow = Allowlist()
    assert refusal("example.com", [ip("8.8.8.8")], allow) is None
    refused = refusal("example.com", [ip("8.8.8.8"), ip("10.0.0.1")], allow)
    assert refused is not None and "10.0.0.1" in refused and "private" in refused
    assert refusal("nowhere.invalid", [], allow) == \
        "nowhere.invalid does not resolve to any address"


def test_the_allowlist_admits_hosts_and_networks() -> None:
    allow = Allowlist.parse(["127.0.0.1", "10.0.0.0/8", "Hooks.Internal.", " "])
    assert allow.hosts == frozenset({"hooks.internal"})
    assert refusal("127.0.0.1", [ip("127.0.0.1")], allow) is None
    assert refusal("svc", [ip("10.9.9.9")], allow) is None
    assert refusal("hooks.internal", [ip("192.168.0.1")], allow) is None
    assert refusal("127.0.0.2", [ip("127.0.0.2")], allow) is not None
    assert refusal("other", [ip("10.0.0.1"), ip("::1")], allow) is not None


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "host/x", "bad host", "a_b"])
def test_a_bad_allowlist_entry_stops_the_process(entry: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW_HOSTS"):
        Allowlist.parse([entry])


# --- retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("failures,jitter,delay", [
    (1, 0.0, 0.5), (1, 0.999999, 1.0), (2, 0.0, 1.0), (3, 0.5, 3.0), (10, 0.0, 256.0),
    (11, 0.0, MAX_BACKOFF_S / 2), (40, 0.0, MAX_BACKOFF_S / 2), (0, 0.0, 0.5),
])
def test_backoff_doubles_up_to_a_cap(failures: int, jitter: float, delay: float) -> None:
    assert retry_delay_s(failures, 1.0, jitter) == pytest.approx(delay, rel=1e-5)


@pytest.mark.parametrize("first,now,retry_for,expected", [
    (0, 0, 3600, False), (0, 3_599_999, 3600, False), (0, 3_600_000, 3600, True),
    (1000, 1000, 0, True),
])
def test_retries_stop_after_a_bounded_time(first: int, now: int, retry_for: float,
                                            expected: bool) -> None:
    assert gives_up(first, now, retry_for) is expected


# --- one delivery ------------------------------------------------------------------------------

def test_the_payload_names_the_event_and_its_task_and_never_changes() -> None:
    body = payload("t1", "end", {"status": "succeeded"}, "1764500000123-0")
    assert json.loads(body) == {"type": "task.end", "timestamp": "2025-11-30T10:53:20.123Z",
                                "data": {"task_id": "t1", "status": "succeeded"}}
    assert payload("t1", "end", {"status": "succeeded"}, "1764500000123-0") == body
    assert message_id("t1", "1764500000123-0") != message_id("t1", "1764500000123-1")


def test_a_delivery_is_signed_per_standard_webhooks() -> None:
    secret = derive_secret("", "alice-key")
    body = payload("t1", "state", {"status": "running"}, "1-0")
    now = dt.datetime.now(dt.UTC)
    headers = signed_headers(secret, message_id("t1", "1-0"), body, now)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(derive_secret("", "bob-key")).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"running", b"succeeded"), headers)


def test_secrets_are_per_key_and_per_server_secret() -> None:
    alice = derive_secret("", "alice")
    assert alice.startswith("whsec_") and len(base64.b64decode(alice[6:])) == 32
    assert derive_secret("", "alice") == alice
    assert len({alice, derive_secret("", "bob"), derive_secret("s1", "alice"),
                derive_secret("s2", "alice")}) == 4


def test_the_record_tallies_each_round() -> None:
    status = initial_status(WebhookSpec("http://h", ("end",)))
    failing = tallied(status, [Attempt(500, "HTTP 500"), Attempt(None, "no answer")], 0, 0)
    assert (failing["attempts"], failing["last_status"], failing["last_error"]) == (
        2, None, "no answer")
    recovered = tallied(failing, [Attempt(200)], 1, 0)
    assert (recovered["delivered"], recovered["attempts"], recovered["last_status"],
            recovered["last_error"]) == (1, 3, 200, "no answer")
    assert tallied(recovered, [Attempt(410, "HTTP 410")], 0, 1)["given_up"] == 1


def test_the_cursor_round_trips() -> None:
    cursor = Cursor("5-1", 2, 1000, None)
    assert Cursor.from_json(cursor.to_json()) == cursor and Cursor.from_json("") == Cursor()


# --- the OpenAPI document ----------------------------------------------------------------------

def _valid(instance: Any, name: str) -> bool:
    document = build_document(load_templates(), max_body_bytes=1024)
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


@pytest.mark.parametrize("webhook,valid", [
    ({"url": "https://example.com/hook"}, True),
    ({"url": "https://example.com/hook", "events": ["progress", "end"]}, True),
    ({"url": "ftp://example.com"}, False),
    ({"url": "https://example.com", "events": []}, False),
    ({"url": "https://example.com", "events": ["done"]}, False),
    ({"url": "https://example.com", "secret": "x"}, False),
])
def test_the_document_describes_the_webhook_field(webhook: dict[str, Any], valid: bool) -> None:
    body = {"workflow": "txt2img", "params": {"prompt": "a lighthouse"}, "webhook": webhook}
    assert _valid(body, "GenerateRequest") is valid


def test_a_task_with_a_webhook_matches_the_task_schema() -> None:
    request = GenerateRequest(None, None, {}, 0, None, WebhookSpec("http://h/x", ("end",)))
    record = new_record(request, "t", None, 1, None, "whsec_c2VjcmV0")
    assert _valid(record.public(), "Task")
    assert _valid({k: v for k, v in record.public().items() if k != "webhook"}, "Task")
    assert _valid({"secret": derive_secret("", "k")}, "WebhookSecret")
