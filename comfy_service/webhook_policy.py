"""Webhooks, the pure parts: the request field, which addresses may be called, the retry
schedule, what one delivery sends (payload and Standard Webhooks headers) and each API key's
signing secret. actors/webhooks.py does the I/O."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from standardwebhooks.webhooks import Webhook

from comfy_service.templates import FieldError

EVENTS = ("state", "progress", "outputs", "end")
# Default: how a task moves and ends, without the progress ticks (up to 5 a second each).
DEFAULT_EVENTS = ("state", "outputs", "end")
MAX_URL_LENGTH = 2048
MAX_RESPONSE_BYTES = 64 * 1024   # read of a receiver's answer; the rest is dropped
MAX_BACKOFF_S = 600.0
SECRET_PREFIX = "whsec_"
# Without WEBHOOK_SECRET the secret is HMAC(this label, key): anyone holding the key can
# compute it (as they can fetch it), and rotating it means rotating the key.
_LABEL = b"comfy-service webhook secret v1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services (AWS, ECS, GCP, Azure, Alibaba, Oracle): never a receiver, even
# where one sits on an address that is otherwise public.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "168.63.129.16", "100.100.100.200",
    "192.0.0.192"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    events: tuple[str, ...]


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@)"
    return None


def parse_webhook(value: Any) -> tuple[WebhookSpec | None, list[FieldError]]:
    """The `webhook` field of a generate body: its shape only (addresses are checked by
    `refusal`, once resolved)."""
    if not isinstance(value, dict):
        return None, [FieldError("webhook", "must be an object with `url` and optional `events`")]
    errors = [FieldError(f"webhook.{key}", "unknown field")
              for key in sorted(set(value) - {"url", "events"})]
    url = value.get("url")
    if not isinstance(url, str):
        errors.append(FieldError("webhook.url", "must be a string"))
    elif (problem := _url_problem(url)) is not None:
        errors.append(FieldError("webhook.url", problem))
    events = value.get("events", list(DEFAULT_EVENTS))
    if not isinstance(events, list) or not events \
            or not all(isinstance(e, str) and e in EVENTS for e in events) \
            or len(set(events)) != len(events):
        errors.append(FieldError("webhook.events", f"must be a non-empty list of distinct "
                                                   f"events from {list(EVENTS)}"))
    if errors:
        return None, errors
    assert isinstance(url, str)
    return WebhookSpec(url, tuple(e for e in EVENTS if e in events)), []


def target(url: str) -> tuple[SplitResult, str, int]:
    """A checked URL's parts, host and port."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return parts, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# --- addresses ---------------------------------------------------------------------------------

def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, Teredo), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_refusal(address: IPAddress) -> str | None:
    """Why a receiver may not be at this address (None: it may)."""
    inner = _embedded_ipv4(address)
    for candidate in {address, inner}:
        if candidate in METADATA_ADDRESSES:
            return "cloud metadata"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private"):
        if any(getattr(candidate, f"is_{kind}") for candidate in (address, inner)):
            return kind.replace("_", "-")
    if not (address.is_global and inner.is_global):
        return "not publicly routable"
    return None


@dataclass(frozen=True)
class Allowlist:
    """WEBHOOK_ALLOW_HOSTS: host names, and addresses or networks (CIDR), that may be called
    although the policy refuses them (a receiver on the operators' own network)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        hosts, networks = set(), []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if "/" in entry or not entry.replace("-", "").replace(".", "").isalnum():
                    raise ValueError(f"WEBHOOK_ALLOW_HOSTS: {entry!r} is neither a host name "
                                     f"nor an address or CIDR") from None
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def refusal(host: str, addresses: Iterable[IPAddress], allow: Allowlist) -> str | None:
    """Why a URL's host may not be called, given every address it resolves to (None: it may).
    A host is refused when any of its addresses is, so no answer of a round-robin name slips
    through."""
    if host.lower().rstrip(".") in allow.hosts:
        return None
    found = list(addresses)
    if not found:
        return f"{host} does not resolve to any address"
    for address in found:
        reason = address_refusal(address)
        if reason is not None and not allow.allows(address):
            shown = host if host.strip("[]") == str(address) else f"{host} resolves to {address}"
            return f"{shown}, a {reason} address: webhooks only go to public addresses " \
                   f"(or hosts in WEBHOOK_ALLOW_HOSTS)"
    return None


# --- retries -----------------------------------------------------------------------------------

def retry_delay_s(failures: int, base_s: float, jitter: float) -> float:
    """Exponential backoff after the `failures`-th failure in a row: base, 2x base, 4x ... up
    to MAX_BACKOFF_S, each between half and all of that (`jitter` in [0, 1)), so receivers
    that came back are not hit by every task at once."""
    full = min(MAX_BACKOFF_S, base_s * 2.0 ** max(0, failures - 1))
    return full / 2 + full / 2 * jitter


def gives_up(first_failure_ms: int, now_ms: int, retry_for_s: float) -> bool:
    """Failing since `first_failure_ms` (without a success in between): stop retrying."""
    return now_ms - first_failure_ms >= retry_for_s * 1000


# --- one delivery ------------------------------------------------------------------------------

def message_id(task_id: str, stream_id: str) -> str:
    """webhook-id: one per event, the same on every retry (receivers deduplicate on it)."""
    return f"msg_{task_id}_{stream_id}"


def payload(task_id: str, event: str, data: Mapping[str, Any], stream_id: str) -> bytes:
    """The body: {type, timestamp (when the event happened), data}, as Standard Webhooks
    suggests; the same bytes on every retry."""
    at = dt.datetime.fromtimestamp(int(stream_id.split("-")[0]) / 1000, dt.UTC)
    return json.dumps({"type": f"task.{event}",
                       "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                       "data": {"task_id": task_id, **data}}, separators=(",", ":")).encode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: dt.datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (the timestamp is the attempt's)."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
            "content-type": "application/json", "user-agent": "comfy-service-webhooks/1"}


def derive_secret(server_secret: str, api_key: str) -> str:
    """The signing secret of an API key ("" without keys): HMAC of the key under WEBHOOK_SECRET,
    or under a fixed label when that is unset."""
    key = server_secret.encode() if server_secret else _LABEL
    digest = hmac.new(key, _LABEL + b"\0" + api_key.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


# --- what the task record shows ----------------------------------------------------------------

def initial_status(spec: WebhookSpec) -> dict[str, Any]:
    """The task record's `webhook` before any delivery."""
    return {"url": spec.url, "events": list(spec.events), "delivered": 0, "given_up": 0,
            "attempts": 0, "last_status": None, "last_error": None}


@dataclass(frozen=True)
class Attempt:
    """What one request got: the HTTP status (None: no answer) and why it failed."""

    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def tallied(status: Mapping[str, Any], attempts: list[Attempt], delivered: int,
            given_up: int) -> dict[str, Any]:
    """The record's `webhook` after a round of attempts. last_error is the latest failure's,
    kept after a later success (attempts and last_status tell that it recovered)."""
    updated = {**status, "delivered": status["delivered"] + delivered,
               "given_up": status["given_up"] + given_up,
               "attempts": status["attempts"] + len(attempts)}
    if attempts:
        updated["last_status"] = attempts[-1].status
    errors = [a.error for a in attempts if a.error]
    if errors:
        updated["last_error"] = errors[-1]
    return updated
