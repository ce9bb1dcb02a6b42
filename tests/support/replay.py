"""Replays a scenario captured from a real ComfyUI against a server and lists the differences.

A scenario file (shared/comfyui-protocol/*.json) holds the HTTP exchanges and WebSocket frames
of one session with a real ComfyUI 0.3.64, numbered by one global `seq`. The replayer performs
the same actions in the same order: before an action it waits until every open socket has
received what the real server had sent by then, so requests meet the server in the same state.
Then it compares status codes, content types, body shapes (keys and value types) and, per
socket, the message sequence (types, order and data shapes). Values that differ from run to
run by nature (ids, timestamps, file counters) are compared by type only.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import websockets
from PIL import Image

# Exchanges whose outcome depends on a few milliseconds of timing in the real capture too.
RACY_QUEUE_READS = {("run_ok_no_model", "during (immediately after POST /prompt)")}
# Sockets that reconnect mid-run lose whatever was sent while they were away: how many
# progress steps that is depends on timing, so repeated progress cycles are compared once.
TIMING_DEPENDENT_SOCKETS = {("multi_client", "clientA_reconnected")}
DEADLINE_S = 30.0
# Scalars compared by value, not only by type: outcome words that do not vary between runs of
# the real server (error kinds and messages, history status, image folder types).
STRICT_KEYS = {"type", "message", "details", "status_str", "completed", "exception_type",
               "exception_message", "node_type", "class_type"}


def _png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class SocketState:
    label: str
    client_id: str | None
    recorded: list[dict[str, Any]]
    actual: list[dict[str, Any]] = field(default_factory=list)
    conn: Any = None
    reader: asyncio.Task[None] | None = None
    open: bool = False


@dataclass
class Exchange:
    recorded: dict[str, Any]
    status: int
    headers: httpx.Headers
    body: Any  # parsed JSON, text, or bytes


class Replayer:
    def __init__(self, scenario: dict[str, Any], base_url: str,
                 strict_keys: frozenset[str] | set[str] = STRICT_KEYS) -> None:
        self.scenario = scenario
        self.strict_keys = strict_keys
        self.name = scenario["scenario"]
        self.base_url = base_url.rstrip("/")
        self.ws_url = "ws" + self.base_url[4:]
        self.sockets = {label: SocketState(label, entry["client_id"], entry["messages"])
                        for label, entry in scenario["ws"].items()}
        self.prompt_ids: dict[str, str] = {}  # recorded prompt_id -> actual
        self.numbers: dict[str, Any] = {}  # actual prompt_id -> `number` of its latest POST
        self.exchanges: list[Exchange] = []
        self.errors: list[str] = []
        self._changed = asyncio.Event()

    # --- the scenario as a list of actions ----------------------------------------------------
    def actions(self) -> list[tuple[float, str, Any]]:
        acts: list[tuple[float, str, Any]] = []
        for exchange in self.scenario["http"]:
            acts.append((exchange["seq"], "http", exchange))
        all_events = [(m["seq"], m["t_ms"]) for s in self.scenario["ws"].values()
                      for m in s["messages"]] + [(e["seq"], e["t_ms"])
                                                 for e in self.scenario["http"]]
        for label, entry in self.scenario["ws"].items():
            acts.append((entry["connect_seq"], "connect", label))
            for frame in entry.get("sent", []):
                acts.append((frame["seq"], "send", (label, frame["data"])))
            if "closed_at_ms" in entry:
                before = [seq for seq, t in all_events if t <= entry["closed_at_ms"]]
                acts.append((max(before) + 0.5, "close", label))
        return sorted(acts, key=lambda a: a[0])

    # --- sockets -------------------------------------------------------------------------------
    async def _read(self, state: SocketState) -> None:
        try:
            async for frame in state.conn:
                if isinstance(frame, bytes):
                    state.actual.append({"frame": "binary", "length": len(frame),
                                         "first_8_bytes_hex": frame[:8].hex(),
                                         "event_type_u32be": struct.unpack(">I", frame[:4])[0]})
                else:
                    message = json.loads(frame)
                    state.actual.append({"frame": "text", "type": message["type"],
                                         "data": message["data"]})
                self._changed.set()
        except websockets.ConnectionClosed:
            pass

    async def _connect(self, label: str) -> None:
        state = self.sockets[label]
        path = self.scenario["ws"][label]["path"]
        state.conn = await websockets.connect(self.ws_url + path, max_size=None, open_timeout=10)
        state.open = True
        state.reader = asyncio.create_task(self._read(state))

    async def _close(self, label: str) -> None:
        state = self.sockets[label]
        state.open = False
        await state.conn.close()
        if state.reader is not None:
            await state.reader

    # --- waiting for the server to catch up ----------------------------------------------------
    @staticmethod
    def _progress_key(message: dict[str, Any]) -> tuple[Any, ...]:
        data = message["data"]
        return (data.get("node"), data.get("value"), data.get("max"))

    def _caught_up(self, state: SocketState, before_seq: float) -> bool:
        recorded = [m for m in state.recorded if m["seq"] < before_seq]
        want: dict[Any, int] = {}
        for m in recorded:
            if m["frame"] != "text" or m["type"] == "progress_state":
                continue
            key = ("progress", *self._progress_key(m)) if m["type"] == "progress" else m["type"]
            want[key] = want.get(key, 0) + 1
        have: dict[Any, int] = {}
        for m in state.actual:
            if m["frame"] != "text":
                continue
            key = ("progress", *self._progress_key(m)) if m["type"] == "progress" else m["type"]
            have[key] = have.get(key, 0) + 1
        return all(have.get(key, 0) >= count for key, count in want.items())

    async def _wait(self, before_seq: float) -> None:
        # DEADLINE_S of silence, not of total time: a real server's cold model load alone took
        # 19 s in the capture, and more than 30 s on a busy 2-core machine.
        deadline = time.monotonic() + DEADLINE_S
        hard_deadline = time.monotonic() + 10 * DEADLINE_S
        while not all(self._caught_up(s, before_seq) for s in self.sockets.values() if s.open):
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                lagging = [s.label for s in self.sockets.values()
                           if s.open and not self._caught_up(s, before_seq)]
                raise TimeoutError(f"{self.name}: sockets {lagging} never received what the "
                                   f"real server had sent before seq {before_seq}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
                deadline = min(time.monotonic() + DEADLINE_S, hard_deadline)
            except TimeoutError:
                pass

    async def _history_written(self, client: httpx.AsyncClient,
                               exchange: dict[str, Any]) -> None:
        """Some server state has no message to wait for: the real server writes a prompt's
        history a few ms after execution_success, before its status broadcast (the capture
        asked 300 ms later). Where the recording shows a history entry, poll for it first."""
        path = exchange["path"]
        if exchange["method"] != "GET" or not path.startswith("/history/") \
                or not exchange.get("response_body"):
            return
        url = self._path(path)
        deadline = time.monotonic() + DEADLINE_S
        while not self._history_ready((await client.get(url)).json(), exchange):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {url} stayed empty or stale")
            await asyncio.sleep(0.01)

    def _history_ready(self, body: Any, exchange: dict[str, Any]) -> bool:
        """Non-empty; for `wait_for_rerun` (a reused prompt id the recording shows re-run),
        also the entry of the latest POST of that id, not the one it replaces."""
        if not body:
            return False
        if not exchange.get("wait_for_rerun"):
            return True
        return all(entry["prompt"][0] == self.numbers.get(pid) for pid, entry in body.items())

    # --- HTTP ----------------------------------------------------------------------------------
    def _map_ids(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.prompt_ids.get(value, value)
        if isinstance(value, list):
            return [self._map_ids(v) for v in value]
        if isinstance(value, dict):
            return {k: self._map_ids(v) for k, v in value.items()}
        return value

    def _filename_map(self) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for state in self.sockets.values():
            recorded = [m for m in state.recorded if m.get("type") == "executed"]
            actual = [m for m in state.actual if m.get("type") == "executed"]
            for rec, act in zip(recorded, actual, strict=False):
                for r_img, a_img in zip((rec["data"]["output"] or {}).get("images", []),
                                        (act["data"]["output"] or {}).get("images", []),
                                        strict=False):
                    mapping[r_img["filename"]] = a_img["filename"]
        return mapping

    def _path(self, recorded_path: str) -> str:
        parts = urlsplit(recorded_path)
        segments = [self.prompt_ids.get(s, s) for s in parts.path.split("/")]
        path = "/".join(segments)
        if parts.query:
            names = self._filename_map()
            query = [(k, names.get(v, v) if k == "filename" else v)
                     for k, v in parse_qsl(parts.query, keep_blank_values=True)]
            path += "?" + urlencode(query, safe=";")
        return path

    async def _http(self, client: httpx.AsyncClient, exchange: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {}
        if exchange.get("request_body_multipart"):
            form = exchange["request_body_multipart"]
            image = form["image"]
            kwargs["files"] = {"image": (image["filename"], _png_bytes(), image["content_type"])}
            kwargs["data"] = {k: v for k, v in form.items() if k != "image"}
        elif exchange.get("request_body_raw") is not None:
            kwargs["content"] = exchange["request_body_raw"]
        elif exchange.get("request_body") is not None:
            kwargs["json"] = self._map_ids(exchange["request_body"])
        response = await client.request(exchange["method"], self._path(exchange["path"]), **kwargs)
        body: Any = response.content
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
        elif response.headers.get("content-type", "").startswith("text/"):
            body = response.text
        if (exchange["method"] == "POST" and exchange["path"].split("?")[0].endswith("/prompt")
                and response.status_code == 200 and isinstance(body, dict)
                and "prompt_id" in (exchange.get("response_body") or {})):
            self.prompt_ids[exchange["response_body"]["prompt_id"]] = body["prompt_id"]
            self.numbers[body["prompt_id"]] = body["number"]
        self.exchanges.append(Exchange(exchange, response.status_code, response.headers, body))

    # --- run -----------------------------------------------------------------------------------
    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            try:
                for seq, kind, payload in self.actions():
                    await self._wait(seq)
                    if kind == "http":
                        await self._history_written(client, payload)
                        await self._http(client, payload)
                    elif kind == "connect":
                        await self._connect(payload)
                    elif kind == "send":
                        await self.sockets[payload[0]].conn.send(json.dumps(payload[1]))
                    elif kind == "close":
                        await self._close(payload)
                await self._wait(float("inf"))
            except TimeoutError as exc:  # report it with the comparison instead of losing both
                self.errors.append(str(exc))
            finally:
                for state in self.sockets.values():
                    if state.open:
                        await self._close(state.label)

    # --- comparison ----------------------------------------------------------------------------
    def differences(self) -> list[str]:
        diffs: list[str] = list(self.errors)
        for exchange in self.exchanges:
            diffs += [f"HTTP {exchange.recorded['method']} {exchange.recorded['path']} "
                      f"({exchange.recorded.get('label')}): {d}" for d in self._compare_http(exchange)]
        for state in self.sockets.values():
            diffs += [f"WS {state.label}: {d}" for d in self._compare_socket(state)]
        return diffs

    def _normalise(self, value: Any, ids: dict[str, str], key: str | None = None) -> Any:
        """Shape of a value: dict keys kept (prompt ids tokenised), leaves replaced by types."""
        if isinstance(value, dict):
            return {ids.get(k, k): self._normalise(v, ids, k) for k, v in value.items()}
        if isinstance(value, list):
            items = [self._normalise(v, ids) for v in value]
            if items and all(isinstance(i, str) for i in items):
                return ["scalars:" + ",".join(sorted(set(items)))]
            return items
        if key in self.strict_keys and isinstance(value, (str, bool)):
            return f"{type(value).__name__}={value!r}"
        return type(value).__name__

    def _shapes(self, recorded: Any, actual: Any) -> tuple[Any, Any]:
        rec_ids = {rid: f"<prompt {i}>" for i, rid in enumerate(self.prompt_ids)}
        act_ids = {aid: f"<prompt {i}>" for i, aid in enumerate(self.prompt_ids.values())}
        return self._normalise(recorded, rec_ids), self._normalise(actual, act_ids)

    def _compare_http(self, ex: Exchange) -> list[str]:
        rec = ex.recorded
        diffs = []
        if ex.status != rec["status"]:
            diffs.append(f"status {ex.status} != recorded {rec['status']}")
        rec_type = rec["response_headers"].get("Content-Type")
        if rec_type and ex.headers.get("content-type") != rec_type:
            diffs.append(f"content-type {ex.headers.get('content-type')!r} != {rec_type!r}")
        if "response_body" in rec:
            recorded_body = rec["response_body"]
            actual_body = ex.body
            if isinstance(recorded_body, dict) and "_truncated" in recorded_body:
                recorded_body = {k: v for k, v in recorded_body.items() if not k.startswith("_")}
                actual_body = {k: v for k, v in actual_body.items() if k in recorded_body}
            if (self.name, rec.get("label")) in RACY_QUEUE_READS:
                recorded_body = len(recorded_body["queue_running"] + recorded_body["queue_pending"])
                actual_body = len(actual_body["queue_running"] + actual_body["queue_pending"])
            r_shape, a_shape = self._shapes(recorded_body, actual_body)
            if r_shape != a_shape:
                diffs.append(f"body shape differs:\n  recorded {json.dumps(r_shape)[:1500]}\n"
                             f"  actual   {json.dumps(a_shape)[:1500]}")
        elif "response_text" in rec:
            if ex.body != rec["response_text"]:
                diffs.append(f"text {ex.body!r} != recorded {rec['response_text']!r}")
        elif "response_bytes" in rec:
            expected = rec["response_bytes"]
            data = ex.body if isinstance(ex.body, bytes) else str(ex.body).encode()
            if expected["length"] == 0 and data:
                diffs.append(f"expected an empty body, got {len(data)} bytes")
            if expected["length"] and data[:8].hex() != expected["first_16_bytes_hex"][:16]:
                diffs.append(f"body starts {data[:8].hex()} != {expected['first_16_bytes_hex']}")
        return diffs

    @staticmethod
    def _compress(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in messages:
            kind = m.get("type", "binary")
            if kind in ("progress", "progress_state") and out and out[-1].get("type") in (
                    "progress", "progress_state"):
                continue
            out.append(m)
        return out

    def _compare_socket(self, state: SocketState) -> list[str]:
        def non_status(ms: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [m for m in ms if m.get("type") != "status"]
        recorded, actual = non_status(state.recorded), non_status(state.actual)
        if (self.name, state.label) in TIMING_DEPENDENT_SOCKETS:
            recorded, actual = self._compress(recorded), self._compress(actual)
        diffs = []
        rec_status = [m for m in state.recorded if m.get("type") == "status"]
        act_status = [m for m in state.actual if m.get("type") == "status"]
        if len(rec_status) != len(act_status):
            diffs.append(f"{len(act_status)} status messages != recorded {len(rec_status)}")
        if not state.actual or state.actual[0].get("type") != "status" or \
                "sid" not in state.actual[0]["data"]:
            diffs.append("first message is not the status hello with sid")
        else:
            sid = state.actual[0]["data"]["sid"]
            expected = state.client_id or sid
            if sid != expected or (state.client_id is None and not re.fullmatch(r"[0-9a-f]{32}",
                                                                                 sid)):
                diffs.append(f"hello sid {sid!r} (expected {state.client_id or '32 hex'})")
        for a, b in zip(rec_status, act_status, strict=False):
            if set(a["data"]) != set(b["data"]):
                diffs.append(f"status keys {sorted(b['data'])} != {sorted(a['data'])}")
        types_rec = [m.get("type", f"binary:{m.get('first_8_bytes_hex')}") for m in recorded]
        types_act = [m.get("type", f"binary:{m.get('first_8_bytes_hex')}") for m in actual]
        if types_rec != types_act:
            diffs.append(f"message types differ:\n  recorded {types_rec}\n  actual   {types_act}")
            return diffs
        for index, (r, a) in enumerate(zip(recorded, actual, strict=True)):
            if r["frame"] == "binary":
                continue
            r_shape, a_shape = self._shapes(_keyless(r), _keyless(a))
            if r_shape != a_shape:
                diffs.append(f"message {index} ({r['type']}) data shape differs:\n"
                             f"  recorded {json.dumps(r_shape)[:800]}\n"
                             f"  actual   {json.dumps(a_shape)[:800]}")
        return diffs


def _keyless(message: dict[str, Any]) -> Any:
    """progress_state snapshots compared as a list: which of several independent output nodes
    ComfyUI runs first follows Python's per-process hash order, so node ids there may differ."""
    data = message["data"]
    if message.get("type") == "progress_state":
        return {**data, "nodes": list(data["nodes"].values())}
    return data


def replay(scenario: dict[str, Any], base_url: str,
           strict_keys: frozenset[str] | set[str] = STRICT_KEYS) -> Replayer:
    replayer = Replayer(scenario, base_url, strict_keys)
    asyncio.run(replayer.run())
    return replayer
