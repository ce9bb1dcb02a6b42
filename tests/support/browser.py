"""Headless Chromium for tests: the system browser in its own process group, driven over CDP."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from comfy_service.agents.process import processes_under
from comfy_service.polling import wait_until

WINDOW = (1400, 900)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class BrowserError(RuntimeError):
    """Chromium is missing, died, or answered a DevTools call with an error."""


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        raise BrowserError("chromium not found: run `make test`, which installs Debian's "
                           "chromium package (or `apt-get install chromium` as root)")
    return binary


class Chromium:
    """`chromium --headless=new` on a free DevTools port with a temporary profile.

    One page, attached at start; `stop()` closes the browser, kills whatever is left of it (its
    process group, its crash handlers) and deletes the profile.
    """

    def __init__(self, log_path: pathlib.Path, window: tuple[int, int] = WINDOW) -> None:
        binary = chromium_binary()
        self.log_path = log_path
        self.window = window
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._session = ""
        with contextlib.ExitStack() as undo:  # a failed start leaves no profile, no open log
            self._profile = pathlib.Path(undo.enter_context(tempfile.TemporaryDirectory(
                prefix="chromium-profile-", ignore_cleanup_errors=True)))
            log = undo.enter_context(open(log_path, "ab"))
            argv = [
                binary, "--headless=new",
                # Only because we run as root (containers, CI): Chromium will not start its
                # sandbox as root. The pages it opens are our own loopback Consul agent's.
                *(["--no-sandbox"] if os.geteuid() == 0 else []),
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self._profile}", f"--window-size={window[0]},{window[1]}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                # Docker's default /dev/shm (64 MiB) is too small for Chromium's shared memory.
                "--disable-dev-shm-usage", "--lang=en-US", "about:blank"]
            # Chromium's crash handlers keep their reports under $XDG_CONFIG_HOME, not the
            # profile: point it into the profile so nothing lands in ~/.config.
            env = {**os.environ, "XDG_CONFIG_HOME": str(self._profile / "config"),
                   "XDG_CACHE_HOME": str(self._profile / "cache")}
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
            # From here on stop() releases them, in reverse order: DevTools socket, log, profile.
            self._resources = undo.pop_all()
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> None:
        active = self._profile / "DevToolsActivePort"

        def endpoint() -> str | None:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with code {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            # Two lines, the port and the browser's path; wait for both to be written.
            lines = active.read_text().split("\n") if active.exists() else []
            if len(lines) < 2 or not lines[1].startswith("/devtools/browser/"):
                return None
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        url = wait_until(endpoint, START_TIMEOUT, "chromium's DevToolsActivePort", 0.05)
        # The screenshot is one message: allow more than the 1 MiB default.
        self._ws = self._resources.enter_context(connect(
            url, max_size=64 * 2**20, proxy=None, open_timeout=START_TIMEOUT))
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.window[0],
                  height=self.window[1], deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = CALL_TIMEOUT, **params: Any) -> Any:
        """One DevTools command (on the page once attached); events in between are dropped."""
        assert self._ws is not None
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                raise BrowserError(f"no answer to {method} within {timeout:g}s") from None
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, accept: Callable[[Any], bool], timeout: float,
                 what: str) -> Any:
        """Poll a JavaScript expression until `accept` takes its value; returns that value.

        A single-page app renders after the load event: polling the DOM is the only sure
        way to know it has drawn what we look for."""
        last: list[Any] = [None]

        def seen() -> list[Any] | None:
            last[0] = self.evaluate(expression)
            return [last[0]] if accept(last[0]) else None
        # An evaluation can fail while a navigation swaps the document: that means "not yet".
        return wait_until(seen, timeout, lambda: f"{what}; the page shows {last[0]!r}", 0.1,
                          transient=lambda exc: isinstance(exc, BrowserError))[0]

    def click(self, selector: str, timeout: float) -> None:
        """Click the first element matching a CSS selector, once the page has drawn it."""
        found = f"document.querySelector({json.dumps(selector)})"
        self.wait_for(f"!!{found}", bool, timeout, f"an element matching {selector!r}")
        self.evaluate(f"{found}.click()")

    def fill(self, selector: str, value: str, timeout: float) -> None:
        """Set a form control's value as typing would: the page sees `input` and `change`."""
        found = f"document.querySelector({json.dumps(selector)})"
        self.wait_for(f"!!{found}", bool, timeout, f"an element matching {selector!r}")
        self.evaluate(f"""(el => {{ el.focus(); el.value = {json.dumps(value)};
            el.dispatchEvent(new Event('input', {{bubbles: true}}));
            el.dispatchEvent(new Event('change', {{bubbles: true}})); }})({found})""")

    def screenshot(self, path: pathlib.Path, height: float | None = None) -> pathlib.Path:
        """A PNG of the viewport, or of its top `height` pixels."""
        params: dict[str, Any] = {"format": "png"}
        if height is not None:
            params["clip"] = {"x": 0, "y": 0, "width": self.window[0],
                              "height": min(height, self.window[1]), "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Close the browser, kill what is left of it, then delete its profile."""
        if self.proc.poll() is None and self._ws is not None:
            # An orderly close lets the browser reap its own helpers.
            with contextlib.suppress(Exception):
                self._session = ""
                self.call("Browser.close", timeout=5)
                self.proc.wait(STOP_TIMEOUT)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        # What is left of the group (renderers, zygotes), then the crash handlers, which run in
        # sessions of their own but name the profile on their command lines.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in processes_under(self._profile):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)
        self._ws = None
        with contextlib.suppress(Exception):  # the socket's peer is gone: closing may complain
            self._resources.close()


@contextlib.contextmanager
def headless_chromium(log_path: pathlib.Path, window: tuple[int, int] = WINDOW) -> Iterator[Chromium]:
    """A Chromium for one test: a missing or broken browser fails the test, never skips it."""
    message = ""
    try:
        chromium = Chromium(log_path, window)
    except BrowserError as exc:
        message = str(exc)
    if message:
        pytest.fail(message, pytrace=False)
    try:
        yield chromium
    finally:
        chromium.stop()
