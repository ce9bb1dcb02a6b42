"""Webhook deliveries, made by the workers: a task's events (its Redis stream, actors/task_events.py)
POSTed to the caller's URL, signed (Standard Webhooks), in order and at least once.

Tasks with a webhook wait in one sorted set (cs:webhooks) by the time to look at them again. A
worker claims due ones with one script that also checks which have an event after their cursor
(an idle task costs a step inside Redis, not a round trip); a claimed task's time is pushed
CLAIM_S ahead, so no other worker delivers it meanwhile, and one whose worker died is taken
again after that. The claimer sends the pending events one by one; event i+1 goes only after
event i was delivered or given up. A failure schedules a retry with exponential backoff; after
WEBHOOK_RETRY_FOR_S of failures in a row, the event is given up and the next one is tried. The
cursor (last event done), the failures in a row and since when live in one hash, written only
if no one else wrote it since it was read. The task record's `webhook` says how it went. A
receiver never affects its task: deliveries run beside the tasks, each request bounded in
time and in what is read back, no redirect followed, to an address checked again right before
(DNS may have changed since the submit) and then connected to directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlunsplit

import httpx
import redis.asyncio as aioredis

from actors.store import EVENTS_READ, TaskStore, now_ms
from actors.task_events import END
from actors.tasks import TaskRecord
from comfy_service import constants as c
from comfy_service.logs import event
from comfy_service.settings import Settings
from comfy_service.webhook_policy import (
    MAX_RESPONSE_BYTES,
    Allowlist,
    Attempt,
    IPAddress,
    derive_secret,
    gives_up,
    message_id,
    payload,
    refusal,
    retry_delay_s,
    signed_headers,
    tallied,
    target,
)

log = logging.getLogger("actors.webhooks")

CLAIM_S = 120.0        # a claimed task is another worker's to take after this
ROUND_S = 60.0         # a claimer stops starting requests after this (well inside CLAIM_S)
POLL_S = 0.25          # how often idle tasks are looked at (a delivery's delay, at most)
SCAN = 500             # due tasks looked at per claim
CONCURRENCY = 64       # tasks whose webhooks one worker delivers at once
MISSING_GRACE_S = 30.0  # a noted task without a record: not stored yet, or gone for good

# KEYS webhooks ZSET, cursors HASH; ARGV now, most to claim, claimed until, next look, events
# key prefix, task key prefix, most to look at. Claims the due tasks that have an event after
# their cursor or no record; the others are looked at again at ARGV[4]. Answers {claimed, how
# many looked at}.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[7])
local claimed, looked = {}, 0
for _, id in ipairs(due) do
  if #claimed >= tonumber(ARGV[2]) then break end
  looked = looked + 1
  local state, cursor = redis.call('HGET', KEYS[2], id), '0-0'
  if state then cursor = cjson.decode(state)['cursor'] end
  if #redis.call('XRANGE', ARGV[5] .. id, '(' .. cursor, '+', 'COUNT', 1) > 0
     or redis.call('EXISTS', ARGV[6] .. id) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(claimed, id)
  else
    redis.call('ZADD', KEYS[1], ARGV[4], id)
  end
end
return {claimed, looked}
"""

# KEYS cursors HASH; ARGV task id, the state as read ('' none), the new state.
_SAVE = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Cursor:
    """Where a task's deliveries stand (the value in cs:webhook_cursors)."""

    cursor: str = "0-0"              # the last event delivered, given up or not subscribed
    failures: int = 0                # failed attempts in a row
    since_ms: int | None = None      # the first of them
    missing_since_ms: int | None = None  # no task record found since then

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Cursor:
        return cls(**json.loads(raw)) if raw else cls()


@dataclass
class Round:
    """What one claim of a task did."""

    state: Cursor
    attempts: list[Attempt] = field(default_factory=list)
    delivered: int = 0
    given_up: int = 0
    finished: bool = False          # the end event is behind the cursor
    retry_at: int | None = None     # a failure: when to try again (ms)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address `host` resolves to ([] when it does not, in time)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       timeout_s)
    except (OSError, TimeoutError):
        return []
    found = (ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    return list(dict.fromkeys(found))


async def vet(url: str, allow: Allowlist, timeout_s: float) -> tuple[str | None, list[IPAddress]]:
    """Why `url` may not be called now (None: it may), and the addresses it resolved to."""
    _, host, port = target(url)
    addresses = await resolve(host, port, timeout_s)
    return refusal(host, addresses, allow), addresses


async def _read_bounded(response: httpx.Response) -> bytes:
    seen = b""
    async for chunk in response.aiter_raw():
        seen += chunk[:MAX_RESPONSE_BYTES - len(seen)]
        if len(seen) >= MAX_RESPONSE_BYTES:
            break  # the rest is dropped with the connection
    return seen


async def post(client: httpx.AsyncClient, url: str, address: IPAddress, body: bytes,
               headers: dict[str, str], timeout_s: float) -> Attempt:
    """One request to `url`, connected to the checked `address` (TLS still verifies the
    URL's host name), bounded by `timeout_s` as a whole."""
    parts, host, port = target(url)
    netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    try:
        async with asyncio.timeout(timeout_s), client.stream(
                "POST", pinned, content=body, headers={**headers, "host": parts.netloc},
                extensions=extensions) as response:
            answer = await _read_bounded(response)
    except TimeoutError:
        return Attempt(None, f"no answer within {timeout_s:g}s")
    except (httpx.HTTPError, OSError) as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
    if 200 <= response.status_code < 300:
        return Attempt(response.status_code)
    shown = answer[:200].decode(errors="replace").strip()
    return Attempt(response.status_code,
                   f"HTTP {response.status_code}" + (f": {shown}" if shown else ""))


class WebhookDelivery:
    """The worker's delivery loop (one per worker; any number of workers)."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, store: TaskStore) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.allow = Allowlist.parse(settings.webhook_allow_hosts)
        self._claim = redis.register_script(_CLAIM)
        self._save_script = redis.register_script(_SAVE)
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run_forever(self) -> None:
        async with httpx.AsyncClient(
                follow_redirects=False, trust_env=False,
                # No connection is reused: each is made to an address checked just before.
                limits=httpx.Limits(max_keepalive_connections=0),
                timeout=self.settings.webhook_timeout_s) as client:
            try:
                while True:
                    try:
                        await self.claim_and_start(client)
                    except Exception:
                        event(log, "webhook.claim_failed", logging.WARNING, exc_info=True)
                    await asyncio.sleep(POLL_S)
            finally:
                await self._hand_back()

    async def claim_and_start(self, client: httpx.AsyncClient) -> None:
        looked = SCAN
        while looked == SCAN and len(self._running) < CONCURRENCY:
            now = now_ms()
            claimed, looked = await self._claim(
                keys=[c.WEBHOOKS_KEY, c.WEBHOOK_CURSORS_KEY],
                args=[now, CONCURRENCY - len(self._running), now + int(CLAIM_S * 1000),
                      now + int(POLL_S * 1000), c.TASK_EVENTS_KEY.format(task_id=""),
                      c.TASK_KEY.format(task_id=""), SCAN])
            for task_id in map(_text, claimed):
                run = asyncio.create_task(self._guarded(client, task_id),
                                          name=f"webhook:{task_id}")
                self._running[task_id] = run
                run.add_done_callback(self._done)

    def _done(self, run: asyncio.Task[None]) -> None:
        self._running.pop(run.get_name().removeprefix("webhook:"), None)

    async def _guarded(self, client: httpx.AsyncClient, task_id: str) -> None:
        try:
            await self.deliver(client, task_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # looked at again after CLAIM_S
            event(log, "webhook.round_failed", logging.WARNING, task_id=task_id, exc_info=True)

    async def _hand_back(self) -> None:
        """Stopping: what this worker was delivering is anyone's again at once."""
        running = list(self._running)
        for run in self._running.values():
            run.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        if running:  # best effort: otherwise another worker takes them after CLAIM_S
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.redis.zadd(
                    c.WEBHOOKS_KEY, {t: now_ms() for t in running}, xx=True), 2.0)

    async def deliver(self, client: httpx.AsyncClient, task_id: str) -> None:
        """One claimed task: its pending events in order, until they are all out, one fails
        (retried later) or the round's time is up; then when to look at it again."""
        raw = _text(await self.redis.hget(c.WEBHOOK_CURSORS_KEY, task_id) or "")
        read, record = Cursor.from_json(raw), await self.store.get(task_id)
        if record is None or record.webhook is None:
            await self._missing(task_id, raw, read, record)
            return
        done = await self._send(client, record, dataclasses.replace(read, missing_since_ms=None))
        if not await self._save_script(keys=[c.WEBHOOK_CURSORS_KEY],
                                       args=[task_id, raw, done.state.to_json()]):
            return  # someone else took it over meanwhile: theirs now
        if done.attempts:
            def note(current: TaskRecord) -> TaskRecord:
                if current.webhook is None:
                    return current
                return dataclasses.replace(current, webhook=tallied(
                    current.webhook, done.attempts, done.delivered, done.given_up))
            await self.store.update(task_id, note)
        if done.finished:
            await forget(self.redis, task_id)
        else:
            await self.redis.zadd(c.WEBHOOKS_KEY, {task_id: done.retry_at or now_ms()}, xx=True)

    async def _send(self, client: httpx.AsyncClient, record: TaskRecord, state: Cursor) -> Round:
        """The events after the cursor, each sent (or passed over, if not subscribed) in turn."""
        assert record.webhook is not None
        entries: Any = await self.redis.xrange(c.TASK_EVENTS_KEY.format(task_id=record.task_id),
                                               f"({state.cursor}", "+", count=EVENTS_READ)
        done, started = Round(state), time.monotonic()
        for raw_id, fields in entries:
            stream_id, name = _text(raw_id), _text(fields[b"event"])
            if name in record.webhook["events"]:
                if time.monotonic() - started + self.settings.webhook_timeout_s > ROUND_S:
                    break  # the rest in the next round
                attempt = await self._attempt(client, record, stream_id, name,
                                              json.loads(fields[b"data"]))
                done.attempts.append(attempt)
                done.state, done.retry_at, gave_up = self._after(record.task_id, done.state,
                                                                 stream_id, attempt)
                done.delivered += attempt.ok
                done.given_up += gave_up
                if done.retry_at is not None:
                    break
            else:
                done.state = dataclasses.replace(done.state, cursor=stream_id)
            if name == END:  # nothing follows it
                done.finished = True
                break
        return done

    def _after(self, task_id: str, state: Cursor, stream_id: str, attempt: Attempt
               ) -> tuple[Cursor, int | None, bool]:
        """The cursor after an attempt, when to retry (None: go on), and whether the event
        was given up."""
        if attempt.ok:
            return Cursor(stream_id), None, False
        now = now_ms()
        failures, since = state.failures + 1, state.since_ms or now
        event(log, "webhook.failed", task_id=task_id, event_id=stream_id, failures=failures,
              status=attempt.status, error=attempt.error)
        if gives_up(since, now, self.settings.webhook_retry_for_s):
            event(log, "webhook.given_up", logging.WARNING, task_id=task_id,
                  event_id=stream_id, failing_for_s=round((now - since) / 1000, 1))
            return Cursor(stream_id, failures, since), None, True
        delay = retry_delay_s(failures, self.settings.webhook_backoff_s, random.random())
        return dataclasses.replace(state, failures=failures, since_ms=since), \
            now + int(delay * 1000), False

    async def _attempt(self, client: httpx.AsyncClient, record: TaskRecord, stream_id: str,
                       name: str, data: dict[str, Any]) -> Attempt:
        assert record.webhook is not None
        url = record.webhook["url"]
        timeout = self.settings.webhook_timeout_s
        reason, addresses = await vet(url, self.allow, timeout)
        if reason is not None:
            return Attempt(None, f"refused: {reason}")
        body = payload(record.task_id, name, data, stream_id)
        secret = record.webhook_secret or derive_secret(self.settings.webhook_secret, "")
        headers = signed_headers(secret, message_id(record.task_id, stream_id), body,
                                 dt.datetime.now(dt.UTC))
        return await post(client, url, addresses[0], body, headers, timeout)

    async def _missing(self, task_id: str, raw: str, state: Cursor,
                       record: TaskRecord | None) -> None:
        """No record (or no webhook on it). The gateway notes a webhook just before storing
        its task, so a record may not be there yet: look again shortly, and forget the task
        only once it has been missing for MISSING_GRACE_S (expired, or never stored)."""
        now = now_ms()
        since = state.missing_since_ms or now
        if record is not None or now - since >= MISSING_GRACE_S * 1000:
            await forget(self.redis, task_id)
            return
        if await self._save_script(keys=[c.WEBHOOK_CURSORS_KEY], args=[
                task_id, raw, dataclasses.replace(state, missing_since_ms=since).to_json()]):
            await self.redis.zadd(c.WEBHOOKS_KEY, {task_id: now + 1000}, xx=True)


async def note(redis: aioredis.Redis, task_id: str) -> None:
    """A task whose events are to be delivered (the gateway, just before storing it, so a
    gateway that dies in between leaves nothing undelivered: see WebhookDelivery._missing)."""
    await redis.zadd(c.WEBHOOKS_KEY, {task_id: now_ms()}, nx=True)


async def forget(redis: aioredis.Redis, task_id: str) -> None:
    """Nothing more to deliver for this task (or it was never stored)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(c.WEBHOOKS_KEY, task_id)
        pipe.hdel(c.WEBHOOK_CURSORS_KEY, task_id)
        await pipe.execute()
