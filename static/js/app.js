/* The home page: live sentiment over the /ws/jobs websocket, and saved jobs.
 *
 * Protocol (webapp/jobs/consumers.py):
 *   → {"type": "predict", "serving": "sentiment", "input": {"text": ...}, "request_id": n}
 *   ← {"type": "prediction", "request_id": n, "result": {...}}
 *   ← {"type": "error", "request_id": n, "code": "...", "message": "..."}
 *   ← {"type": "job", "job": {...}}   and on connect {"type": "jobs", "jobs": [...]}
 *
 * Plain browser JavaScript, no build step. Everything the server sends is put
 * into the page with textContent, never as HTML.
 */
(function () {
  "use strict";

  const app = document.getElementById("app");
  if (!app) return;

  const config = {
    wsPath: app.dataset.wsPath || "/ws/jobs",
    apiJobs: app.dataset.apiJobs || "/api/jobs",
    serving: app.dataset.serving || "sentiment",
    maxChars: parseInt(app.dataset.maxChars, 10) || 20000,
  };
  const DEBOUNCE_MS = 250;
  const SLOW_MS = 3000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const JOBS_SHOWN = 50;

  const $ = (id) => document.getElementById(id);
  const el = {
    text: $("text"),
    counter: $("char-count"),
    result: $("result"),
    status: $("result-status"),
    label: $("result-label"),
    score: $("result-score"),
    bar: $("result-bar"),
    model: $("result-model"),
    truncated: $("result-truncated"),
    error: $("error"),
    errorTitle: $("error-title"),
    errorMessage: $("error-message"),
    errorCode: $("error-code"),
    errorDismiss: $("error-dismiss"),
    form: $("analyse-form"),
    save: $("save-job"),
    saveStatus: $("save-status"),
    jobs: $("jobs"),
    jobsEmpty: $("jobs-empty"),
    connection: $("connection"),
    connectionText: $("connection-text"),
  };

  // --- Small helpers -------------------------------------------------------

  const numbers = new Intl.NumberFormat();

  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) {
      if (child) node.append(child);
    }
    return node;
  }

  function tone(label) {
    const l = String(label || "").toLowerCase();
    return l === "positive" || l === "negative" ? l : "neutral";
  }

  function clampScore(score) {
    const n = Number(score);
    return Number.isFinite(n) ? Math.min(1, Math.max(0, n)) : 0;
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

  function durationText(ms) {
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.round(ms / 60000)} min`;
  }

  /** Put a message into `node`, showing `backticked` parts as code. */
  function setMessage(node, message) {
    node.replaceChildren();
    String(message || "").split("`").forEach((part, i) => {
      if (!part) return;
      node.append(i % 2 ? h("code", { text: part }) : document.createTextNode(part));
    });
  }

  function csrfToken() {
    for (const pair of document.cookie ? document.cookie.split(";") : []) {
      const [name, ...rest] = pair.trim().split("=");
      if (name === "csrftoken") return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  // --- The error banner ----------------------------------------------------

  const ERROR_TITLES = {
    model_not_installed: "The model is not installed",
    invalid_input: "Check the text",
    unknown_serving: "Unknown serving",
    serving_failed: "The model failed",
    integrity_error: "The model files do not match their pinned hash",
    internal_error: "Something went wrong on the server",
    invalid_json: "The request was not understood",
    csrf_failed: "The page is out of date",
    network_error: "The server could not be reached",
  };
  let errorSource = null; // "predict", "save" or "socket": who may clear it

  function showError(code, message, source) {
    errorSource = source;
    el.errorTitle.textContent = ERROR_TITLES[code] || "Something went wrong";
    setMessage(el.errorMessage, message || "No details were given.");
    el.errorCode.textContent = code ? `code: ${code}` : "";
    el.error.dataset.code = code || "";
    el.error.hidden = false;
  }

  function clearError(source) {
    if (source && errorSource !== source) return;
    errorSource = null;
    el.error.hidden = true;
    el.error.dataset.code = "";
  }

  el.errorDismiss.addEventListener("click", () => clearError());

  // --- The live result -----------------------------------------------------

  let requestSeq = 0;
  let latestRequest = 0; // the only request whose answer is shown
  let debounceTimer = null;
  let slowTimer = null;
  let saving = false; // a POST /api/jobs is on its way

  function setResultState(state, statusText) {
    el.result.dataset.state = state;
    el.result.setAttribute("aria-busy", state === "analysing" ? "true" : "false");
    el.status.textContent = statusText || "";
    el.status.hidden = !statusText;
    clearTimeout(slowTimer);
    if (state === "analysing") {
      slowTimer = setTimeout(() => {
        el.status.textContent = "Still analysing… (the first request may be loading the model)";
      }, SLOW_MS);
    }
  }

  function clearResult() {
    el.label.textContent = "";
    el.label.dataset.tone = "";
    el.score.textContent = "";
    el.bar.style.width = "0%";
    el.bar.dataset.tone = "";
    el.model.textContent = "";
    el.model.removeAttribute("title");
    el.truncated.hidden = true;
  }

  function showResult(result) {
    const score = clampScore(result && result.score);
    const label = String((result && result.label) || "");
    el.label.textContent = label;
    el.label.dataset.tone = tone(label);
    el.score.textContent = `${(score * 100).toFixed(1)}%`;
    el.score.dataset.score = String(score);
    el.bar.style.width = `${(score * 100).toFixed(1)}%`;
    el.bar.dataset.tone = tone(label);
    el.model.textContent = (result && result.model) || "";
    el.model.title = "The model's name@version";
    el.truncated.hidden = !(result && result.truncated);
    setResultState("done", "");
  }

  function requestPrediction() {
    clearTimeout(debounceTimer);
    const text = el.text.value;
    if (!text.trim()) return;
    const id = ++requestSeq;
    latestRequest = id;
    el.result.dataset.requestId = String(id);
    const sent = send({ type: "predict", serving: config.serving, input: { text }, request_id: id });
    if (sent) setResultState("analysing", "Analysing…");
    else setResultState("waiting", "Waiting for the connection… the text is sent when it is back.");
  }

  function onTextInput() {
    el.saveStatus.textContent = "";
    updateCounter();
    updateSaveButton();
    clearTimeout(debounceTimer);
    if (!el.text.value.trim()) {
      latestRequest = ++requestSeq; // answers still on their way are now stale
      clearResult();
      clearError("predict");
      setResultState("idle", "Start typing to see the sentiment.");
      return;
    }
    debounceTimer = setTimeout(requestPrediction, DEBOUNCE_MS);
  }

  function updateCounter() {
    const n = el.text.value.length;
    el.counter.textContent = `${numbers.format(n)} / ${numbers.format(config.maxChars)}`;
    el.counter.classList.toggle("near-limit", n >= config.maxChars * 0.9);
    el.counter.classList.toggle("at-limit", n >= config.maxChars);
  }

  function updateSaveButton() {
    el.save.disabled = saving || !el.text.value.trim();
  }

  // --- The websocket -------------------------------------------------------

  let socket = null;
  let attempts = 0;
  let reconnectTimer = null;
  let countdownTimer = null;

  function setConnection(state, text) {
    el.connection.dataset.state = state;
    el.connectionText.textContent = text;
  }

  function send(message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    if (socket && socket.readyState <= WebSocket.OPEN) return;
    setConnection("connecting", attempts ? "Reconnecting…" : "Connecting…");
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    let ws;
    try {
      ws = new WebSocket(scheme + window.location.host + config.wsPath);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener("open", () => {
      attempts = 0;
      setConnection("open", "Live");
      if (errorSource === "socket") clearError("socket");
      if (el.text.value.trim()) requestPrediction(); // answers in flight were lost with the old socket
    });
    ws.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      handleMessage(message);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      if (el.result.dataset.state === "analysing") {
        setResultState("waiting", "Connection lost… the text is sent again when it is back.");
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempts);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    attempts += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      setConnection("closed", `Offline · retrying in ${left} s`);
    };
    tick();
    clearInterval(countdownTimer);
    countdownTimer = setInterval(tick, 1000);
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, delay);
  }

  // Retry at once when the browser says the network is back, or on a click.
  window.addEventListener("online", () => {
    if (!socket) connect();
  });
  el.connection.addEventListener("click", () => {
    if (!socket) connect();
  });

  function handleMessage(message) {
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "prediction":
        if (message.request_id !== latestRequest) return; // stale: the text has changed since
        clearError("predict");
        showResult(message.result || {});
        break;
      case "error":
        if (message.request_id !== undefined && message.request_id !== null) {
          if (message.request_id !== latestRequest) return;
          clearResult();
          setResultState("error", "No result: see the message above.");
          showError(message.code, message.message, "predict");
        } else {
          showError(message.code, message.message, "socket");
        }
        break;
      case "job":
        upsertJob(message.job);
        break;
      case "jobs":
        for (const job of message.jobs || []) upsertJob(job);
        break;
      default:
        break;
    }
  }

  // --- Jobs ----------------------------------------------------------------

  const STATUS_RANK = { queued: 0, running: 1, done: 2, failed: 2 };

  function rank(status) {
    return STATUS_RANK[status] === undefined ? 0 : STATUS_RANK[status];
  }

  /** The same markup as the server-rendered rows of home.html. */
  function renderJob(job) {
    const status = String(job.status || "queued");
    const result = job.result || {};
    const head = h("div", { class: "job-head" }, [
      h("p", { class: "job-text", "data-testid": "job-text", title: job.input_summary || "", text: job.input_summary || "" }),
      h("span", { class: `status status-${status}`, "data-testid": "job-status", text: status }),
    ]);
    let outcome = null;
    if (status === "done" && result.label) {
      const pct = Math.round(clampScore(result.score) * 100);
      outcome = h("div", { class: "job-outcome" }, [
        h("span", { class: "chip small", "data-testid": "job-label", "data-tone": tone(result.label), text: result.label }),
        h("span", { class: "job-score", "data-testid": "job-score", text: `${pct}%` }),
        h("span", { class: "minibar", "aria-hidden": "true" }, [
          h("span", { class: "bar-fill", "data-tone": tone(result.label), style: `width: ${pct}%` }),
        ]),
      ]);
    } else if (status === "failed") {
      outcome = h("p", { class: "job-error", "data-testid": "job-error" });
      setMessage(outcome, job.error || "The job failed.");
    }
    const meta = h("p", { class: "job-meta" }, [
      job.model_version ? h("span", { class: "model", "data-testid": "job-model", text: job.model_version }) : null,
      job.queued_at ? h("span", {}, ["queued ", h("time", { datetime: job.queued_at, text: job.queued_at })]) : null,
      job.finished_at
        ? h("span", {}, ["finished ", h("time", { datetime: job.finished_at, "data-started": job.started_at || "", text: job.finished_at })])
        : null,
    ]);
    const node = h("li", {
      class: "job",
      "data-testid": "job",
      "data-job-id": job.id,
      "data-status": status,
      "data-queued-at": job.queued_at || "",
    }, [head, outcome, meta]);
    decorateTimes(node);
    return node;
  }

  /** Local, readable times, and how long a finished job took. */
  function decorateTimes(root) {
    for (const node of root.querySelectorAll("time[datetime]")) {
      if (node.dataset.decorated) continue;
      node.dataset.decorated = "1";
      const at = parseTime(node.getAttribute("datetime"));
      if (!at) continue;
      node.textContent = clockText(at);
      node.title = at.toLocaleString();
      const started = parseTime(node.dataset.started);
      if (started) node.after(h("span", { class: "took", text: ` · took ${durationText(at - started)}` }));
    }
  }

  function findJob(id) {
    for (const node of el.jobs.children) {
      if (node.dataset.jobId === id) return node;
    }
    return null;
  }

  function upsertJob(job) {
    if (!job || typeof job !== "object" || !job.id) return;
    const existing = findJob(String(job.id));
    if (existing && rank(job.status) < rank(existing.dataset.status)) return; // an older state arriving late
    const node = renderJob(job);
    if (existing) {
      existing.replaceWith(node);
    } else {
      const queued = parseTime(job.queued_at);
      let before = null;
      for (const other of el.jobs.children) {
        const otherQueued = parseTime(other.dataset.queuedAt);
        if (queued && otherQueued && otherQueued < queued) {
          before = other;
          break;
        }
      }
      el.jobs.insertBefore(node, before);
      while (el.jobs.children.length > JOBS_SHOWN) el.jobs.lastElementChild.remove();
    }
    el.jobsEmpty.hidden = el.jobs.children.length > 0;
  }

  // --- Saving a job --------------------------------------------------------

  async function saveJob() {
    const text = el.text.value;
    if (!text.trim() || saving) return;
    saving = true;
    updateSaveButton();
    el.saveStatus.textContent = "Saving…";
    try {
      const response = await fetch(config.apiJobs, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ serving: config.serving, input: { text } }),
      });
      let body = null;
      try {
        body = await response.json();
      } catch (err) {
        body = null;
      }
      if (response.ok && body && body.id) {
        upsertJob(body);
        clearError("save");
        el.saveStatus.textContent = "Saved. It runs in the background and shows below.";
      } else if (body && body.error) {
        showError(body.error.code, body.error.message, "save");
        el.saveStatus.textContent = "Not saved.";
      } else if (response.status === 403) {
        showError("csrf_failed", "The server refused the request (403). Reload the page and try again.", "save");
        el.saveStatus.textContent = "Not saved.";
      } else {
        showError("internal_error", `The server answered ${response.status} ${response.statusText}.`, "save");
        el.saveStatus.textContent = "Not saved.";
      }
    } catch (err) {
      showError("network_error", "Check your connection and try again.", "save");
      el.saveStatus.textContent = "Not saved.";
    } finally {
      saving = false;
      updateSaveButton();
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveJob();
  });
  el.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      saveJob();
    }
  });

  // --- Start ---------------------------------------------------------------

  el.text.maxLength = config.maxChars;
  el.text.addEventListener("input", onTextInput);
  for (const node of document.querySelectorAll(".max-chars")) node.textContent = numbers.format(config.maxChars);
  decorateTimes(el.jobs);
  for (const node of el.jobs.querySelectorAll(".job-error")) setMessage(node, node.textContent);
  el.jobsEmpty.hidden = el.jobs.children.length > 0;
  updateCounter();
  updateSaveButton();
  if (el.text.value.trim()) setResultState("waiting", "Connecting…");
  else setResultState("idle", "Start typing to see the sentiment.");
  connect();
})();
