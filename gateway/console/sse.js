// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and the
// key must never go in the URL. Parses the stream as the SSE spec says and resumes with
// Last-Event-ID after a dropped connection, so no event is lost or seen twice.

import { ApiError, apiUrl, authHeaders, errorOf } from "./api.js";

// Feeds text in, calls onMessage({event, data, id}) for each complete message.
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.lastEventId = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  feed(text) {
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    // The last piece is an incomplete line (or "" after a newline): keep it for later.
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onMessage({ event: this.event || "message", data: this.data.join("\n"),
                         id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

const RETRY_MS = [500, 1000, 2000, 5000, 10000];

// Follows GET /api/v1/tasks/{id}/events until `end` (resolves) or an API error such as 404,
// 401 or 429 (rejects with ApiError). Network failures reconnect with Last-Event-ID.
export async function followEvents(taskId, onEvent, signal) {
  const parser = new SseParser((message) => {
    let data = null;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    onEvent(message.event, data);
    if (message.event === "end") parser.ended = true;
  });
  let failures = 0;
  while (!parser.ended) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (parser.lastEventId) headers["Last-Event-ID"] = parser.lastEventId;
    let response;
    try {
      response = await fetch(apiUrl(`tasks/${encodeURIComponent(taskId)}/events`),
                             { headers, signal, cache: "no-store" });
    } catch (exc) {
      if (signal && signal.aborted) throw exc;
      await pause(RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)], signal);
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    try {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        failures = 0;
        parser.feed(value);
        if (parser.ended) {
          reader.cancel().catch(() => {});
          break;
        }
      }
    } catch (exc) {
      if (signal && signal.aborted) throw exc;
    }
    parser.buffer = "";
    parser.reset();
    if (!parser.ended) await pause(RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)], signal);
  }
}

export function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new ApiError(0, "aborted", "aborted", null));
    }, { once: true });
  });
}
