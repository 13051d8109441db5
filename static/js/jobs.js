/* The jobs list, rendered in one place from the server's data (job JSON, docs/api.md).
 *
 * The same row renderer draws the page's initial jobs, the websocket's
 * snapshot ("jobs"), each state change ("job") and each streamed item
 * ("job.progress": the progress bar and the partial outputs so far):
 *
 *   const jobs = new JobsList(listElement, emptyElement, {serving: "sentiment", view});
 *   jobs.snapshot(initialJobs);
 *   jobs.watch(socket);
 *   jobs.upsert(jobJustCreated);
 *
 * `view` is the serving's renderer module: its optional `renderResult(result,
 * job)` and `renderPartials(partials, job)` draw a row's outcome (returning a
 * Node, or null for the generic view). The generic view shows artifacts as
 * links (images as thumbnails) and other values as compact JSON.
 */
import { compactJson, h, setMessage, sizeText } from "./dom.js";

const JOBS_SHOWN = 50;
const TEXT_SHOWN = 5000; // characters of a text result shown in a row (the API has it all)
const STATUS_RANK = { queued: 0, running: 1, done: 2, failed: 2 };

function rank(status) {
  return STATUS_RANK[status] === undefined ? 0 : STATUS_RANK[status];
}

function parseTime(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? null : new Date(t);
}

function clockText(date) {
  const sameDay = date.toDateString() === new Date().toDateString();
  const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  return sameDay ? date.toLocaleTimeString([], opts) : date.toLocaleString([], { dateStyle: "medium", timeStyle: "medium" });
}

export function durationText(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

/** Is `next` a later state of the job than `current`? (Messages can arrive late.) */
function supersedes(next, current) {
  const byStatus = rank(next.status) - rank(current.status);
  if (byStatus !== 0) return byStatus > 0;
  if (next.status === "running") {
    const attempts = (next.attempts || 0) - (current.attempts || 0);
    if (attempts !== 0) return attempts > 0; // a new delivery starts over
    return (next.partials || []).length >= (current.partials || []).length;
  }
  return true;
}

/** A job file or result artifact: {"name", "url", "content_type", "size"}. */
export function isFileRef(value) {
  return Boolean(value && typeof value === "object" && typeof value.name === "string" && "content_type" in value && "url" in value);
}

export function isImage(file) {
  return /^image\//.test(String(file.content_type || ""));
}

/** A link to an owner-checked file, with a thumbnail for images. */
export function fileLink(file, testid) {
  const url = typeof file.url === "string" && file.url.startsWith("/") ? file.url : null;
  const children = [
    url && isImage(file) ? h("img", { class: "thumb", src: url, alt: "", loading: "lazy", "data-testid": `${testid}-thumb` }) : null,
    h("span", { class: "file-name", text: file.name }),
    file.size !== undefined && file.size !== null ? h("span", { class: "file-size", text: sizeText(file.size) }) : null,
  ];
  return url
    ? h("a", { class: "file", href: url, target: "_blank", rel: "noopener", "data-testid": testid }, children)
    : h("span", { class: "file", "data-testid": testid }, children);
}

/** The generic result view: scalars as text, artifacts as links, the rest as compact JSON. */
export function genericResult(result, job) {
  const shown = new Set(((job && job.files) || []).map((f) => f.url)); // listed under the row already
  const value = (v) => {
    if (isFileRef(v)) return fileLink(v, "result-file");
    if (v !== null && typeof v === "object") return h("code", { class: "json", text: compactJson(v) });
    if (typeof v === "string") return h("span", { class: "text-value", text: compactJson(v, TEXT_SHOWN) });
    return h("span", { text: compactJson(v) });
  };
  if (result === null || result === undefined) return null;
  if (typeof result !== "object" || Array.isArray(result)) {
    return h("div", { class: "result-fields" }, [value(result)]);
  }
  const rows = [];
  for (const [key, v] of Object.entries(result)) {
    if (isFileRef(v) && shown.has(v.url)) continue;
    rows.push(h("dt", { text: key }), h("dd", { "data-field": key }, [value(v)]));
  }
  return rows.length ? h("dl", { class: "result-fields" }, rows) : null;
}

/** The generic partials view: texts joined (a transcript growing), else one compact line each. */
export function genericPartials(partials) {
  const present = partials.filter((p) => p !== undefined && p !== null);
  if (present.every((p) => typeof p === "object" && typeof p.text === "string")) {
    return h("p", { class: "partials-text" }, present.map((p) => h("span", { "data-testid": "job-partial", text: `${p.text} ` })));
  }
  return h("ol", { class: "partials" }, present.map((p) => h("li", { "data-testid": "job-partial", text: compactJson(p) })));
}

export class JobsList {
  constructor(list, empty, { serving, view }) {
    this.list = list;
    this.empty = empty;
    this.serving = serving;
    this.view = view || {};
    this.entries = new Map(); // id -> {job, total, node, drawn}
    this.ticker = null;
  }

  watch(socket) {
    socket.on("jobs", (message) => this.snapshot(message.jobs));
    socket.on("job", (message) => this.upsert(message.job));
    socket.on("job.progress", (message) => this.progress(message));
  }

  snapshot(jobs) {
    for (const job of Array.isArray(jobs) ? jobs : []) this.upsert(job);
    this.refreshEmpty();
  }

  upsert(job) {
    if (!job || typeof job !== "object" || !job.id) return;
    if (this.serving && job.serving && job.serving !== this.serving) return; // another serving's page shows it
    const id = String(job.id);
    const entry = this.entries.get(id);
    if (entry && !supersedes(job, entry.job)) return;
    const total = entry && entry.job.attempts === job.attempts ? entry.total : null;
    this.draw(id, { job, total });
  }

  /** One more item of a fanned-out job is done: {job_id, progress, done, total, partial}. */
  progress(message) {
    const entry = this.entries.get(String(message.job_id));
    if (!entry || rank(entry.job.status) > rank("running")) return;
    const partials = [...(entry.job.partials || [])];
    const done = Number(message.done);
    if (Number.isInteger(done) && done >= 1) {
      if (done <= partials.length && partials[done - 1] !== undefined) return; // already known (a snapshot had it)
      partials[done - 1] = message.partial;
    }
    const job = { ...entry.job, status: "running", progress: Number(message.progress) || 0, partials };
    this.draw(String(message.job_id), { job, total: Number(message.total) || entry.total });
  }

  draw(id, state) {
    const existing = this.entries.get(id);
    const drawn = JSON.stringify(state);
    if (existing && existing.drawn === drawn) return;
    const node = this.renderRow(state);
    if (existing) {
      existing.node.replaceWith(node);
    } else {
      this.insert(node, parseTime(state.job.queued_at));
    }
    this.entries.set(id, { ...state, node, drawn });
    this.trim();
    this.refreshEmpty();
    this.tick();
  }

  insert(node, queued) {
    let before = null;
    for (const other of this.list.children) {
      const otherQueued = parseTime(other.dataset.queuedAt);
      if (queued && otherQueued && otherQueued < queued) {
        before = other;
        break;
      }
    }
    this.list.insertBefore(node, before);
  }

  trim() {
    while (this.list.children.length > JOBS_SHOWN) {
      const last = this.list.lastElementChild;
      this.entries.delete(last.dataset.jobId);
      last.remove();
    }
  }

  refreshEmpty() {
    this.empty.hidden = this.list.children.length > 0;
  }

  renderRow({ job, total }) {
    const status = String(job.status || "queued");
    const node = h("li", {
      class: "job",
      "data-testid": "job",
      "data-job-id": job.id,
      "data-status": status,
      "data-queued-at": job.queued_at || "",
      "data-progress": String(Number(job.progress) || 0),
    }, [
      h("div", { class: "job-head" }, [
        job.input_file ? fileLink(job.input_file, "job-input") : null,
        h("p", { class: "job-text", "data-testid": "job-text", title: job.input_summary || "", text: job.input_summary || "" }),
        h("span", { class: `status status-${status}`, "data-testid": "job-status", text: status }),
      ]),
      this.renderProgress(job, status, total),
      this.renderOutcome(job, status),
      (job.files || []).length
        ? h("ul", { class: "job-files", "data-testid": "job-files" }, job.files.map((f) => h("li", {}, [fileLink(f, "job-file")])))
        : null,
      this.renderMeta(job, status),
    ]);
    return node;
  }

  renderProgress(job, status, total) {
    const partials = job.partials || [];
    const fraction = Math.min(1, Math.max(0, Number(job.progress) || 0));
    if (status !== "running" || (!fraction && !partials.length)) return null;
    const done = partials.filter((p) => p !== undefined).length;
    const of = total || Number(job.items) || 0;
    const pct = `${(fraction * 100).toFixed(0)}%`;
    return h("div", { class: "job-progress" }, [
      h("span", {
        class: "minibar wide",
        role: "progressbar",
        "aria-label": "Progress",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": (fraction * 100).toFixed(0),
        "data-testid": "job-progress",
      }, [h("span", { class: "bar-fill", "data-testid": "job-progress-bar", style: `width: ${pct}` })]),
      h("span", { class: "job-progress-text", "data-testid": "job-progress-text", text: of ? `${done} of ${of} · ${pct}` : pct }),
    ]);
  }

  renderOutcome(job, status) {
    const partials = job.partials || [];
    if (status === "done") {
      const view = (this.view.renderResult && this.view.renderResult(job.result, job)) || genericResult(job.result, job);
      return view ? h("div", { class: "job-result", "data-testid": "job-result" }, [view]) : null;
    }
    const parts = [];
    if (partials.length) {
      const view = (this.view.renderPartials && this.view.renderPartials(partials, job)) || genericPartials(partials);
      parts.push(h("div", { class: "job-partials", "data-testid": "job-partials" }, [view]));
    }
    if (status === "failed") {
      const error = h("p", { class: "job-error", "data-testid": "job-error" });
      setMessage(error, job.error || "The job failed.");
      parts.push(error);
    }
    return parts.length ? h("div", { class: "job-outcome-block" }, parts) : null;
  }

  renderMeta(job, status) {
    const queued = parseTime(job.queued_at);
    const started = parseTime(job.started_at);
    const finished = parseTime(job.finished_at);
    const time = (date, iso) => h("time", { datetime: iso, title: date.toLocaleString(), text: clockText(date) });
    return h("p", { class: "job-meta" }, [
      job.model_version ? h("span", { class: "model", "data-testid": "job-model", text: `served by ${job.model_version}`, title: "the model version that produced this result" }) : null,
      queued ? h("span", {}, ["queued ", time(queued, job.queued_at)]) : null,
      finished
        ? h("span", {}, [
          "finished ",
          time(finished, job.finished_at),
          started ? h("span", { class: "took", text: ` · took ${durationText(finished - started)}` }) : null,
        ])
        : null,
      !finished && status === "running" && started
        ? h("span", { class: "elapsed", "data-running-since": String(started.getTime()), text: `running for ${durationText(Date.now() - started)}` })
        : null,
    ]);
  }

  /** Keep "running for …" current while some job runs. */
  tick() {
    const update = () => {
      const running = this.list.querySelectorAll("[data-running-since]");
      for (const node of running) node.textContent = `running for ${durationText(Date.now() - Number(node.dataset.runningSince))}`;
      if (!running.length) {
        clearInterval(this.ticker);
        this.ticker = null;
      }
    };
    if (!this.ticker && this.list.querySelector("[data-running-since]")) this.ticker = setInterval(update, 1000);
  }
}
