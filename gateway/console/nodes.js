// The nodes view: GET /api/v1/nodes as the workers see them, redrawn every few seconds.

import { getJson } from "./api.js";
import { el } from "./form.js";

const REFRESH_MS = 5000;

function gpu(node) {
  const card = node.gpu;  // what the node's sidecar reports (null without one)
  if (!card) return "—";
  const parts = [];
  if (typeof card.util_pct === "number") parts.push(`${Math.round(card.util_pct)}%`);
  if (typeof card.vram_used_mb === "number" && typeof card.vram_total_mb === "number") {
    parts.push(`${Math.round(card.vram_used_mb)} / ${Math.round(card.vram_total_mb)} MB`);
  }
  if (card.name) parts.push(card.name);
  return parts.join(", ") || "—";
}

function row(node) {
  const free = Math.max(0, (node.slots ?? 0) - (node.slots_used ?? 0));
  const speed = typeof node.speed === "number"
    ? `${node.speed.toFixed(2)}× (${node.speed_source || "?"})` : "—";
  return el("tr", { "data-node": node.name, class: node.healthy ? "healthy" : "unhealthy" },
            el("td", { text: node.name, title: node.url || "" }),
            el("td", { class: "health", text: node.healthy ? "healthy" : "unhealthy" }),
            el("td", { text: node.availability || "ready" }),
            el("td", { text: `${node.slots_used ?? 0} / ${free}` }),
            el("td", { text: String(node.queue_remaining ?? 0) }),
            el("td", { text: gpu(node) }),
            el("td", { text: speed }));
}

export class NodesView {
  constructor(table, onError) {
    this.body = table.querySelector("tbody");
    this.onError = onError;
    this.timer = null;
  }

  async refresh() {
    try {
      const { nodes } = await getJson("nodes");
      this.body.replaceChildren(...(nodes.length ? nodes.map(row)
        : [el("tr", {}, el("td", { colspan: 7, class: "muted", text: "no nodes yet" }))]));
    } catch (exc) {
      this.onError(exc);
    }
  }

  start() {
    clearInterval(this.timer);
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, REFRESH_MS);
  }
}
