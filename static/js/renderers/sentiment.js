/* Sentiment: the answer as you type, and saved jobs with a label chip and score bar.
 *
 * Each pause in typing (250 ms) sends a `predict` over the socket; only the
 * newest request's answer is shown (answers can overtake each other). After
 * 3 s without one the page says it is still analysing; when the connection
 * drops mid-request the text is sent again once it is back.
 */
import { h } from "../dom.js";
import { postJson } from "../http.js";

const DEBOUNCE_MS = 250;
const SLOW_MS = 3000;
const DEFAULT_MAX_CHARS = 20000;
const numbers = new Intl.NumberFormat();

function tone(label) {
  const l = String(label || "").toLowerCase();
  return l === "positive" || l === "negative" ? l : "neutral";
}

function clampScore(score) {
  const n = Number(score);
  return Number.isFinite(n) ? Math.min(1, Math.max(0, n)) : 0;
}

/** A saved job's outcome: the label chip, the score and a small bar. */
export function renderResult(result) {
  if (!result || !result.label) return null;
  const pct = Math.round(clampScore(result.score) * 100);
  return h("div", { class: "job-outcome" }, [
    h("span", { class: "chip small", "data-testid": "job-label", "data-tone": tone(result.label), text: result.label }),
    h("span", { class: "job-score", "data-testid": "job-score", text: `${pct}%` }),
    h("span", { class: "minibar", "aria-hidden": "true" }, [
      h("span", { class: "bar-fill", "data-tone": tone(result.label), style: `width: ${pct}%` }),
    ]),
  ]);
}

function build(maxChars) {
  const el = {};
  el.text = h("textarea", {
    id: "text",
    name: "text",
    "data-testid": "text",
    rows: "5",
    maxlength: String(maxChars),
    placeholder: "e.g. I loved this film, the acting was great.",
    "aria-describedby": "char-count text-help",
    autocomplete: "off",
    spellcheck: "true",
  });
  el.counter = h("span", { id: "char-count", class: "counter", "data-testid": "char-count", "aria-live": "off" });
  el.status = h("p", { id: "result-status", class: "result-status", "data-testid": "result-status" });
  el.label = h("span", { id: "result-label", class: "chip", "data-testid": "result-label", "data-tone": "" });
  el.score = h("span", { id: "result-score", class: "result-score", "data-testid": "result-score" });
  el.bar = h("span", { id: "result-bar", class: "bar-fill", "data-testid": "result-bar", "data-tone": "", style: "width: 0%" });
  el.model = h("span", { id: "result-model", class: "model", "data-testid": "result-model" });
  el.truncated = h("span", {
    id: "result-truncated",
    class: "note",
    "data-testid": "result-truncated",
    hidden: true,
    text: "Only the beginning of the text was analysed (it is longer than the model reads).",
  });
  el.result = h("div", {
    id: "result",
    class: "result",
    "data-state": "idle",
    "data-testid": "result",
    "aria-live": "polite",
    "aria-atomic": "true",
    "aria-busy": "false",
  }, [
    el.status,
    h("div", { class: "result-main" }, [el.label, el.score]),
    h("div", { class: "bar", "aria-hidden": "true" }, [el.bar]),
    h("p", { class: "result-meta" }, [el.model, el.truncated]),
  ]);
  el.save = h("button", { type: "submit", id: "save-job", class: "button primary", "data-testid": "save-job", disabled: true, text: "Save as job" });
  el.saveStatus = h("span", { id: "save-status", class: "save-status", role: "status" });
  el.form = h("form", { id: "analyse-form", class: "analyse", novalidate: true }, [
    h("div", { class: "field-head" }, [h("label", { for: "text", text: "Text to analyse" }), el.counter]),
    el.text,
    h("p", { id: "text-help", class: "help" }, [
      "Up to ",
      h("span", { class: "max-chars", text: numbers.format(maxChars) }),
      " characters. Results update as you type; nothing is saved until you save a job.",
    ]),
    el.result,
    h("div", { class: "actions" }, [el.save, el.saveStatus]),
  ]);
  return el;
}

export function mount(container, { serving, spec, socket, jobs, banner, api }) {
  const maxChars = Number((spec.limits || {}).max_chars) || DEFAULT_MAX_CHARS;
  const el = build(maxChars);
  container.replaceChildren(el.form);
  banner.titles.invalid_input = "Check the text";

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
    const id = socket.requestId();
    latestRequest = id;
    el.result.dataset.requestId = String(id);
    const sent = socket.send({ type: "predict", serving, input: { text }, request_id: id });
    if (sent) setResultState("analysing", "Analysing…");
    else setResultState("waiting", "Waiting for the connection… the text is sent when it is back.");
  }

  function updateCounter() {
    const n = el.text.value.length;
    el.counter.textContent = `${numbers.format(n)} / ${numbers.format(maxChars)}`;
    el.counter.classList.toggle("near-limit", n >= maxChars * 0.9);
    el.counter.classList.toggle("at-limit", n >= maxChars);
  }

  function updateSaveButton() {
    el.save.disabled = saving || !el.text.value.trim();
  }

  function onTextInput() {
    el.saveStatus.textContent = "";
    updateCounter();
    updateSaveButton();
    clearTimeout(debounceTimer);
    if (!el.text.value.trim()) {
      latestRequest = socket.requestId(); // answers still on their way are now stale
      clearResult();
      banner.clear("predict");
      setResultState("idle", "Start typing to see the sentiment.");
      return;
    }
    debounceTimer = setTimeout(requestPrediction, DEBOUNCE_MS);
  }

  async function saveJob() {
    const text = el.text.value;
    if (!text.trim() || saving) return;
    saving = true;
    updateSaveButton();
    el.saveStatus.textContent = "Saving…";
    const answer = await postJson(api.jobs, { serving, input: { text } });
    if (answer.ok && answer.body.id) {
      jobs.upsert(answer.body);
      banner.clear("save");
      el.saveStatus.textContent = "Saved. It runs in the background and shows below.";
    } else {
      banner.show(answer.error.code, answer.error.message, "save");
      el.saveStatus.textContent = "Not saved.";
    }
    saving = false;
    updateSaveButton();
  }

  socket.on("prediction", (message) => {
    if (message.request_id !== latestRequest) return; // stale: the text has changed since
    banner.clear("predict");
    showResult(message.result || {});
  });
  socket.on("error", (message) => {
    if (message.request_id === undefined || message.request_id === null || message.request_id !== latestRequest) return;
    clearResult();
    setResultState("error", "No result: see the message above.");
    banner.show(message.code, message.message, "predict");
  });
  socket.on("open", () => {
    if (el.text.value.trim()) requestPrediction(); // answers in flight were lost with the old socket
  });
  socket.on("close", () => {
    if (el.result.dataset.state === "analysing") {
      setResultState("waiting", "Connection lost… the text is sent again when it is back.");
    }
  });

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
  el.text.addEventListener("input", onTextInput);
  updateCounter();
  updateSaveButton();
  setResultState("idle", "Start typing to see the sentiment.");
}
