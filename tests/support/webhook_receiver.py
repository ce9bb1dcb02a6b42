"""A webhook receiver on loopback for tests and benchmarks: answers by path, records every
request it gets.

  /ok/<name>                 200
  /fail/<n>/<name>           500 for the first n requests to this path, then 200
  /hang/<name>               no answer until the receiver closes
  /redirect/<name>           302 to /ok/<name>
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_LIMIT_S = 60.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                body, time.time())
                with receiver._lock:
                    receiver._requests.append(seen)
                    earlier = sum(1 for r in receiver._requests if r.path == self.path)
                self._answer(earlier)

            def _answer(self, count: int) -> None:
                kind, _, rest = self.path.strip("/").partition("/")
                if kind == "hang":
                    receiver._released.wait(HANG_LIMIT_S)
                    return
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"/ok/{rest}")
                elif kind == "fail" and count <= int(rest.partition("/")[0]):
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self._requests if r.path == path]

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
