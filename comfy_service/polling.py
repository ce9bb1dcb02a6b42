"""The one readiness poller: wait for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float,
               what: str | Callable[[], str] = "a condition", interval: float = 0.02,
               transient: Callable[[Exception], bool] = lambda exc: False) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` at the deadline.

    An exception from `condition` propagates unless `transient(exc)` says it only means
    "not yet"; the last such exception is chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = condition()
        except Exception as exc:
            if not transient(exc):
                raise
            last, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            if last is not None:
                text = f"{text} (last error: {last!r})"
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {text}") from last
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """The URL answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
