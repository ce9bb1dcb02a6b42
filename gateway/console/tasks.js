// The tasks submitted from this page: kept in localStorage (ids and last known state, never the
// key), each drawn as a card with its live status, progress and a cancel button, and each
// succeeded task's outputs in the gallery, fetched with the key and shown from blob: URLs.

import { ApiError, getJson, request } from "./api.js";
import { el } from "./form.js";
import { followEvents, pause } from "./sse.js";

const STORE_ITEM = "comfy-service.tasks";
const KEEP = 24;
// Browsers open at most 6 connections per host over HTTP/1.1 and each event stream holds one:
// past this many, tasks are followed by polling so the page's other calls still get through.
const MAX_STREAMS = 3;
const POLL_MS = 2000;
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

function load() {
  try {
    const tasks = JSON.parse(localStorage.getItem(STORE_ITEM) || "[]");
    return Array.isArray(tasks) ? tasks : [];
  } catch {
    return [];
  }
}

function percent(task) {
  if (task.status === "succeeded") return 100;
  const fraction = task.progress && task.progress.fraction;
  return typeof fraction === "number" ? Math.round(fraction * 100) : 0;
}

export class TaskList {
  constructor({ list, empty, gallery, onAuthError }) {
    Object.assign(this, { list, empty, gallery, onAuthError });
    this.tasks = load();
    this.cards = new Map();
    this.shots = new Map(); // task id -> its place in the gallery
    this.following = new Set();
    this.shown = new Set(); // tasks whose outputs are in the gallery
    this.streams = 0;
  }

  save() {
    this.tasks = this.tasks.slice(0, KEEP);
    localStorage.setItem(STORE_ITEM, JSON.stringify(this.tasks));
  }

  find(taskId) {
    return this.tasks.find((task) => task.task_id === taskId);
  }

  // Draws every stored task, oldest first so the newest ends on top (no call: no key yet).
  drawAll() {
    for (const task of [...this.tasks].reverse()) this.draw(task);
  }

  // Follows the tasks still moving and shows the others' outputs (again after a new key).
  resume() {
    for (const task of this.tasks) {
      if (!FINAL.has(task.status) && task.status !== "gone") this.follow(task.task_id);
      else if (task.status === "succeeded") this.showOutputs(task);
    }
  }

  add(task) {
    this.tasks.unshift(task);
    this.save();
    this.draw(task);
    this.follow(task.task_id);
  }

  update(taskId, changes) {
    const task = this.find(taskId);
    if (!task) return;
    Object.assign(task, changes);
    this.save();
    this.render(task);
    if (task.status === "succeeded") this.showOutputs(task);
  }

  fromRecord(record) {
    const { status, node, attempts, progress, outputs, error, finished_at } = record;
    this.update(record.task_id, { status, node, attempts, progress, outputs, error, finished_at });
  }

  onEvent(taskId, event, data) {
    if (event === "state") {
      this.update(taskId, { status: data.status, node: data.node, attempts: data.attempts });
    } else if (event === "progress") {
      this.update(taskId, { progress: { value: data.value, max: data.max, fraction: data.fraction },
                            node: data.node });
    } else if (event === "outputs") {
      this.update(taskId, { outputs: data.outputs });
    } else if (event === "end") {
      this.update(taskId, { status: data.status, error: data.error, finished_at: data.finished_at });
    }
  }

  // Live over SSE while few streams are open, by polling otherwise (or when the service says
  // this key has too many streams open).
  async follow(taskId) {
    if (this.following.has(taskId)) return;
    this.following.add(taskId);
    try {
      if (this.streams < MAX_STREAMS) {
        this.streams++;
        try {
          await followEvents(taskId, (event, data) => this.onEvent(taskId, event, data));
          return;
        } catch (exc) {
          if (!(exc instanceof ApiError) || exc.status !== 429) throw exc;
        } finally {
          this.streams--;
        }
      }
      for (;;) {
        const record = await getJson(`tasks/${encodeURIComponent(taskId)}`);
        this.fromRecord(record);
        if (FINAL.has(record.status)) return;
        await pause(POLL_MS);
      }
    } catch (exc) {
      this.lost(taskId, exc);
    } finally {
      this.following.delete(taskId);
    }
  }

  lost(taskId, exc) {
    if (exc instanceof ApiError && exc.status === 404) {
      this.update(taskId, { status: "gone", note: "expired, or another key's task" });
    } else if (exc instanceof ApiError && exc.status === 401) {
      this.onAuthError(exc);
    } else {
      this.update(taskId, { note: `lost touch: ${exc.message}` });
    }
  }

  async cancel(taskId) {
    try {
      const response = await request(`tasks/${encodeURIComponent(taskId)}`, { method: "DELETE" });
      this.fromRecord(await response.json());
    } catch (exc) {
      if (exc instanceof ApiError && exc.code === "task_finished") {
        this.fromRecord(await getJson(`tasks/${encodeURIComponent(taskId)}`));
      } else {
        this.lost(taskId, exc);
      }
    }
  }

  draw(task) {
    const status = el("span", { class: "status" });
    const bar = el("progress", { max: 100, value: 0 });
    const cancel = el("button", { type: "button", class: "secondary small cancel", text: "Cancel" });
    cancel.addEventListener("click", () => this.cancel(task.task_id));
    const summary = task.summary ? el("span", { class: "summary", text: task.summary }) : null;
    const card = el("li", { class: "task", "data-task-id": task.task_id },
                    el("div", { class: "task-head" },
                       el("strong", { text: task.workflow || "custom" }),
                       el("code", { title: task.task_id, text: task.task_id.slice(0, 8) }),
                       summary, status),
                    el("div", { class: "task-progress" }, bar, el("span", { class: "percent" })),
                    el("div", { class: "task-foot" },
                       el("span", { class: "node muted" }), el("span", { class: "note" }), cancel));
    this.cards.set(task.task_id, card);
    this.list.prepend(card);
    this.empty.hidden = true;
    const shots = el("div", { class: "shots", "data-task-id": task.task_id });
    this.shots.set(task.task_id, shots);
    this.gallery.prepend(shots);
    this.render(task);
  }

  render(task) {
    const card = this.cards.get(task.task_id);
    if (!card) return;
    card.dataset.status = task.status;
    card.querySelector(".status").textContent = task.status;
    card.querySelector("progress").value = percent(task);
    card.querySelector(".percent").textContent = `${percent(task)}%`;
    card.querySelector(".node").textContent = task.node ? `on ${task.node}` : "";
    const note = task.error ? `${task.error.code}: ${task.error.message}` : task.note || "";
    card.querySelector(".note").textContent = note;
    card.querySelector(".note").classList.toggle("error", Boolean(task.error));
    card.querySelector(".cancel").hidden = FINAL.has(task.status) || task.status === "gone";
  }

  async showOutputs(task) {
    if (this.shown.has(task.task_id) || !task.outputs || !task.outputs.length) return;
    this.shown.add(task.task_id);
    const shots = this.shots.get(task.task_id);
    shots.replaceChildren(); // a second try (after a new key) starts afresh
    for (const output of task.outputs) {
      const figure = el("figure", { "data-index": output.index },
                        el("figcaption", { text: `${task.summary || task.workflow} #${output.index}` }));
      shots.append(figure);
      try {
        const path = `tasks/${encodeURIComponent(task.task_id)}/outputs/${output.index}`;
        const blob = await (await request(path)).blob();
        figure.prepend(mediaFor(output, URL.createObjectURL(blob)));
      } catch (exc) {
        this.shown.delete(task.task_id);
        figure.prepend(el("p", { class: "error", text: `not shown: ${exc.message}` }));
        if (exc instanceof ApiError && exc.status === 401) this.onAuthError(exc);
      }
    }
  }
}

function mediaFor(output, url) {
  const label = output.filename || `output ${output.index}`;
  if (output.kind === "image") {
    return el("a", { href: url, download: label, title: label },
              el("img", { src: url, alt: label }));
  }
  if (output.kind === "video") return el("video", { src: url, controls: true, muted: true, loop: true });
  if (output.kind === "audio") return el("audio", { src: url, controls: true });
  return el("a", { href: url, download: label, text: `download ${label}` });
}
