/* The staff status page: draws a snapshot (webapp/status/snapshot.py) and redraws each one
 * /ws/status/ pushes (every STATUS_REFRESH_S seconds).
 *
 *   <script id="status-data" type="application/json">{"type": "status", "workers": [...]}</script>
 */

import { JobsSocket } from "./socket.js";

const root = document.getElementById("status");
const $ = (testid) => root.querySelector(`[data-testid="${testid}"]`);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

const number = (value, digits = 1) => (value == null ? "–" : Number(value).toFixed(digits));
const percent = (value) => (value == null ? "–" : `${Math.round(value * 100)} %`);
const pair = (figures) => (figures ? `${number(figures.p50)} / ${number(figures.p99)}` : "–");

const COLUMNS = [
  ["Serving", (s) => s.serving],
  ["Version", (s) => el("code", { textContent: s.version, title: s.route ? `route ${s.route}, weight ${s.weight}` : "the settings' model" })],
  ["Device", (s) => s.device],
  ["Batch (size / wait ms / parallel)", (s) => `${s.batch_size} / ${number(s.batch_timeout_ms, 0)} / ${s.parallel_batches}`],
  ["Waiting", (s) => String(s.pending), true],
  ["Items/s", (s) => number(s.last_minute.items_per_s, 2), true],
  ["Batch fill", (s) => percent(s.last_minute.batch_fill), true],
  ["Inference p50 / p99 ms", (s) => pair(s.last_minute.inference_ms), true],
  ["Wait p50 / p99 ms", (s) => pair(s.last_minute.wait_ms), true],
];

function servingsTable(servings) {
  const head = el("tr", {}, COLUMNS.map(([title, , num]) => el("th", num ? { class: "num" } : {}, [title])));
  const rows = servings.map((serving) =>
    el("tr", { "data-testid": "serving", "data-serving": serving.serving, "data-version": serving.version },
      COLUMNS.map(([, cell, num]) => el("td", num ? { class: "num" } : {}, [cell(serving)]))),
  );
  return el("table", { class: "status-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
}

function workerBlock(worker) {
  const facts = worker.answered ? `pid ${worker.pid} · pool ${worker.pool}` : "answers pings, not the report (busy?)";
  const block = el("div", { class: "status-worker", "data-testid": "worker", "data-node": worker.node }, [
    el("h3", {}, [worker.node, " ", el("span", { class: "muted", textContent: facts })]),
  ]);
  const errors = Object.entries(worker.load_errors || {});
  if (errors.length) {
    block.append(el("ul", { class: "status-errors" }, errors.map(([name, why]) => el("li", {}, [`${name}: ${why}`]))));
  }
  block.append(worker.servings.length ? servingsTable(worker.servings) : el("p", { class: "muted" }, ["No serving loaded."]));
  return block;
}

function draw(snapshot) {
  $("mode").textContent = snapshot.mode === "celery" ? "(Celery workers)" : "(in this web process)";
  $("taken-at").textContent = new Date(snapshot.taken_at * 1000).toLocaleTimeString();
  $("refresh").textContent = snapshot.refresh_s;
  const workers = snapshot.workers.map(workerBlock);
  $("workers").replaceChildren(...(workers.length ? workers : [el("p", { class: "muted" }, ["No worker answers."])]));
  const queues = Object.entries(snapshot.queues || {});
  $("queues-card").hidden = !queues.length;
  $("queues").replaceChildren(...queues.map(([name, n]) => el("tr", {}, [el("td", {}, [name]), el("td", { class: "num" }, [String(n)])])));
}

draw(JSON.parse(document.getElementById("status-data").textContent));
const socket = new JobsSocket(root.dataset.wsPath, document.getElementById("connection"));
socket.on("status", draw);
socket.connect();
