"""Fault injection for tests (POST /sim/faults): what a real ComfyUI node can do to its clients."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

DEFAULT_FAILURE_MESSAGE = "simulated failure"


@dataclass
class FaultSettings:
    fail_next: int = 0
    failure_message: str = DEFAULT_FAILURE_MESSAGE
    hang: bool = False
    refuse_ws: bool = False
    step_ms: float | None = None
    crash: bool = False
    crash_on_prompt: bool = False


class Faults:
    """Current faults; the executor, the HTTP layer and the WebSocket layer all consult it."""

    FIELDS = {"fail_next": int, "failure_message": str, "hang": bool, "refuse_ws": bool,
              "step_ms": float, "crash": bool, "crash_on_prompt": bool}

    def __init__(self) -> None:
        self.state = FaultSettings()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._hanging = asyncio.Event()  # the opposite of _flowing, for sleepers to wake on

    @property
    def failure_message(self) -> str:
        return self.state.failure_message

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a JSON body; raises ValueError naming a bad field."""
        for key, value in changes.items():
            kind = self.FIELDS.get(key)
            if kind is None:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(self.FIELDS)}")
            if value is not None and not isinstance(value, (int, float, bool, str)):
                raise ValueError(f"{key} must be a {kind.__name__}")
            if key == "step_ms" and value is not None and float(value) < 0:
                raise ValueError("step_ms must be >= 0")
            setattr(self.state, key, None if value is None else kind(value))
        if self.state.hang:
            self._flowing.clear()
            self._hanging.set()
        else:
            self._flowing.set()
            self._hanging.clear()

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self.state))

    def take_failure(self) -> bool:
        if self.state.fail_next > 0:
            self.state.fail_next -= 1
            return True
        return False

    def step_ms(self, default: float) -> float:
        return default if self.state.step_ms is None else self.state.step_ms

    @property
    def hung(self) -> bool:
        return self.state.hang

    async def wait_while_hung(self) -> None:
        await self._flowing.wait()

    async def sleep_unless_hung(self, seconds: float) -> None:
        """Sleep, but wake as soon as a hang starts: one timer instead of a poll loop, which
        matters with a thousand nodes sampling in one process (the node farm)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hanging.wait(), seconds)
