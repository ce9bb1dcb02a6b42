"""The client without I/O: operations are generators that yield effects (send a request, read
the open stream, sleep) and get their results back, so one implementation serves the sync and
the async client; each client only performs effects (its `_run`).

Retries live here too: 429 and 503 are retried after Retry-After (or a backoff), within
RetryPolicy's attempts and total wait; no other 4xx ever is. A broken connection is retried only
for a request that is safe to repeat (GET, DELETE, and generate, which carries an
Idempotency-Key).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from comfy_service.client.errors import NetworkError, error_from_response

T = TypeVar("T")
RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call:
    """One request, relative to the client's base URL."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float | None = None  # None: the client's
    repeatable: bool = True  # safe to send again after a broken connection

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        timeout = http.timeout
        if self.read_timeout is not None:
            timeout = httpx.Timeout(timeout.connect, read=self.read_timeout,
                                    write=timeout.write, pool=timeout.pool)
        return http.build_request(self.method, self.path, json=self.json, content=self.content,
                                  headers=self.headers, timeout=timeout)


@dataclass(frozen=True)
class Send:
    """Send a call; the reply is its httpx.Response. With `stream`, a successful answer's body
    stays open for ReadEvent / ReadChunk (an error answer's body is read)."""

    call: Call
    stream: bool = False


@dataclass(frozen=True)
class ReadEvent:
    """The open stream's next Server-Sent Event, or None when it ended."""


@dataclass(frozen=True)
class ReadChunk:
    """The open stream's next bytes, or None when it ended."""


@dataclass(frozen=True)
class Close:
    """Close the open stream, if any."""


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Send | ReadEvent | ReadChunk | Close | Sleep
# Effects out, their results in (an httpx.HTTPError is thrown in instead), T at the end.
Operation = Generator[Effect, Any, T]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a request answered 429/503 or whose connection broke."""

    attempts: int = 5  # sends in all, the first included
    max_wait_s: float = 60.0  # total time slept between them
    backoff_s: float = 0.5  # first pause without Retry-After; doubles, at most 8 s

    def delay(self, attempt: int, waited_s: float, retry_after_s: float | None) -> float | None:
        """The pause before send number `attempt + 1`, or None: give up."""
        if attempt + 1 >= self.attempts:
            return None
        pause = retry_after_s if retry_after_s is not None \
            else min(self.backoff_s * 2 ** attempt, 8.0)
        return None if waited_s + pause > self.max_wait_s else pause


def exchange(call: Call, policy: RetryPolicy, stream: bool = False
             ) -> Operation[httpx.Response]:
    """Send `call`, retrying as the policy allows; a successful answer, or its ApiError."""
    attempt, waited = 0, 0.0
    while True:
        try:
            response: httpx.Response = yield Send(call, stream)
        except httpx.TransportError:
            pause = policy.delay(attempt, waited, None) if call.repeatable else None
            if pause is None:
                raise
        else:
            if response.status_code < 400:
                return response
            error = error_from_response(response)
            pause = policy.delay(attempt, waited, error.retry_after_s) \
                if response.status_code in RETRIED_STATUSES else None
            if pause is None:
                raise error
        yield Sleep(pause)
        attempt, waited = attempt + 1, waited + pause


def json_of(call: Call, policy: RetryPolicy) -> Operation[Any]:
    response = yield from exchange(call, policy)
    return response.json()


class Runner(Generic[T]):
    """One operation in progress, for a client's `_run`: `next()` is its next effect (None once
    it returned `value`); the effect's outcome goes in `reply`, or `error` (thrown in)."""

    def __init__(self, operation: Operation[T]) -> None:
        self.operation = operation
        self.reply: Any = None
        self.error: httpx.HTTPError | None = None
        self.value: Any = None
        self.response: httpx.Response | None = None  # the stream held open for reads
        self.items: Any = None  # its event or chunk iterator, once read

    def next(self) -> Effect | None:
        try:
            effect = self.operation.throw(self.error) if self.error \
                else self.operation.send(self.reply)
        except StopIteration as done:
            self.value = done.value
            return None
        except httpx.HTTPError as exc:  # the operation gave up on it: ours from here on
            raise NetworkError(f"{type(exc).__name__}: {exc}") from exc
        self.reply, self.error = None, None
        return effect

    def opened(self, response: httpx.Response) -> httpx.Response:
        """Hold a streamed answer open for reads, unless it is an error (read and closed)."""
        if response.status_code < 400:
            self.response = response
        return response

    def release(self) -> httpx.Response | None:
        """The open stream, no longer held (the caller closes it)."""
        response, self.response, self.items = self.response, None, None
        return response
