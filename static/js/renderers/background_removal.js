/* Profile photo (background removal): drop or pick a photo and it shows at once,
 * is uploaded and submitted as a job; the job's states pushed over the websocket
 * show as steps with the time taken (upload → queued → processing → done); then
 * the cutout over a checkerboard, with the PNG and the mask as downloads (the
 * job's owner-checked file URLs).
 *
 *   {"serving": "background_removal",
 *    "input": {"file": "<upload id>", "background": "color", "bgcolor": "#e8eaff", "avatar": true}}
 *
 * Switching the background (transparent, a colour, the photo blurred) or
 * "avatar" after a result submits the same upload again with the new options:
 * the server composes, so what is shown is exactly what downloads, at full
 * resolution (a second or two on a CPU). Every run is a job of its own in the
 * list below, where a click on a cutout brings it back up here.
 */
import { h, setMessage, sizeText } from "../dom.js";
import { postJson } from "../http.js";
import { durationText, isFileRef } from "../jobs.js";
import { UploadWidget } from "../upload.js";

const TICK_MS = 100;
const BACKGROUNDS = [
  ["transparent", "Transparent"],
  ["color", "Colour"],
  ["blur", "Blur"],
];
const SWATCHES = ["#ffffff", "#eef1f6", "#dbe7ff", "#ffe6d5", "#1d2330"];
const STEPS = [
  ["uploading", "Upload"],
  ["queued", "Queued"],
  ["running", "Processing"],
  ["done", "Done"],
];
const STEP_RANK = { uploading: 0, queued: 1, running: 2, done: 3, failed: 3 };
const SAYS = {
  uploading: "Uploading",
  queued: "Queued",
  running: "Removing the background",
  done: "Done",
  failed: "Failed",
};

let openInStage = null; // set by mount: show a job of the list in the page's stage

function stem(job) {
  const name = (job && job.input_file && job.input_file.name) || "photo";
  return name.replace(/\.[^.]{1,5}$/, "") || "photo";
}

function dimensions(result) {
  const w = Number(result && result.width);
  const hgt = Number(result && result.height);
  return w && hgt ? `${w}×${hgt}` : "";
}

function hasCutout(job) {
  return Boolean(job && job.status === "done" && job.result && isFileRef(job.result.cutout));
}

/** A finished job in the list: the cutout over a checkerboard (a click shows it above), its downloads. */
export function renderResult(result, job) {
  if (!result || typeof result !== "object" || !isFileRef(result.mask)) return null;
  const cutout = isFileRef(result.cutout) ? result.cutout : null;
  const image = cutout || result.mask;
  const open = h("a", {
    class: "bg-thumb checker", href: image.url, target: "_blank", rel: "noopener", title: cutout ? "Show it above" : "Open the mask",
    "data-testid": "bg-job-open",
  }, [h("img", { src: image.url, alt: cutout ? "Cutout" : "Mask", loading: "lazy", "data-testid": "bg-job-thumb" })]);
  open.addEventListener("click", (event) => {
    if (!cutout || !openInStage || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault(); // shown in the page's stage instead of a tab of its own
    openInStage(job);
  });
  const name = stem(job);
  return h("div", { class: "bg-result", "data-testid": "bg-job-result" }, [
    open,
    h("div", { class: "bg-facts" }, [
      h("p", { class: "bg-fact-line" }, [
        h("span", { text: dimensions(result) }),
        result.avatar_box ? h("span", { class: "chip small", text: "avatar 512×512" }) : null,
        result.subject_box === null ? h("span", { class: "chip small", "data-tone": "negative", text: "no subject found" }) : null,
      ]),
      h("p", { class: "bg-fact-line" }, [
        cutout ? downloadLink(cutout, `${name}-cutout.png`, "PNG", "bg-job-download-png") : null,
        downloadLink(result.mask, `${name}-mask.png`, "Mask", "bg-job-download-mask"),
      ]),
    ]),
  ]);
}

function downloadLink(file, filename, label, testid) {
  return h("a", { class: "bg-download-link", href: file.url, download: filename, "data-testid": testid }, [
    h("span", { text: `↓ ${label}` }),
    file.size ? h("span", { class: "file-size", text: sizeText(file.size) }) : null,
  ]);
}

function buildOptions() {
  const radios = BACKGROUNDS.map(([value]) => h("input", {
    type: "radio", name: "bg-background", value, id: `bg-background-${value}`, "data-testid": `bg-background-${value}`,
  }));
  radios[0].checked = true;
  const color = h("input", {
    type: "color", id: "bg-color", value: SWATCHES[0], "aria-label": "Background colour", "data-testid": "bg-color",
  });
  const swatches = SWATCHES.map((value) => h("button", {
    type: "button", class: "bg-swatch", style: `--swatch: ${value}`, title: value, "aria-label": `Colour ${value}`, "data-color": value,
  }));
  const avatar = h("input", { type: "checkbox", id: "bg-avatar", "data-testid": "bg-avatar" });
  const colorRow = h("div", { class: "bg-colors", "data-testid": "bg-colors", hidden: true }, [...swatches, color]);
  const element = h("fieldset", { class: "bg-options", "data-testid": "options" }, [
    h("legend", { class: "visually-hidden", text: "Options" }),
    h("div", { class: "bg-option" }, [
      h("span", { class: "option-label", id: "bg-background-label", text: "Background" }),
      h("div", { class: "segmented", role: "radiogroup", "aria-labelledby": "bg-background-label" },
        radios.map((radio, i) => h("label", { for: radio.id }, [radio, h("span", { text: BACKGROUNDS[i][1] })]))),
      colorRow,
    ]),
    h("div", { class: "bg-option" }, [
      h("span", { class: "option-label", text: "Shape" }),
      h("label", { class: "check bg-check", for: "bg-avatar" }, [
        avatar,
        h("span", {}, [h("span", { text: "Square avatar" }), h("small", { class: "muted", text: " 512×512 around the subject" })]),
      ]),
    ]),
  ]);

  function background() {
    return (radios.find((r) => r.checked) || radios[0]).value;
  }

  function refresh() {
    colorRow.hidden = background() !== "color";
    for (const swatch of swatches) swatch.setAttribute("aria-pressed", String(swatch.dataset.color === color.value.toLowerCase()));
  }

  for (const swatch of swatches) {
    swatch.addEventListener("click", () => {
      color.value = swatch.dataset.color;
      color.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }
  element.addEventListener("change", refresh);
  color.addEventListener("input", refresh);
  refresh();

  return {
    element,
    /** The job's options: only what differs from the serving's defaults. */
    values() {
      const out = { background: background(), avatar: avatar.checked };
      if (out.background === "color") out.bgcolor = color.value;
      return out;
    },
  };
}

function buildStatus() {
  const steps = STEPS.map(([state, label]) => h("li", { class: "bg-step", "data-step": state }, [
    h("span", { class: "bg-step-dot", "aria-hidden": "true" }),
    h("span", { class: "bg-step-label", text: label }),
  ]));
  const last = steps[steps.length - 1].querySelector(".bg-step-label");
  const elapsed = h("span", { class: "bg-elapsed", "data-testid": "bg-elapsed", "aria-hidden": "true" });
  const said = h("span", { class: "visually-hidden", "aria-live": "polite", "data-testid": "bg-status-text" });
  const element = h("div", { class: "bg-status", "data-testid": "bg-status", "data-state": "idle", hidden: true }, [
    h("ol", { class: "bg-steps" }, steps),
    elapsed,
    said,
  ]);
  return {
    element,
    set(state, seconds) {
      element.hidden = state === "idle";
      element.dataset.state = state;
      const rank = STEP_RANK[state] === undefined ? -1 : STEP_RANK[state];
      steps.forEach((step, i) => {
        step.classList.toggle("passed", i < rank || (state === "done" && i === rank));
        step.classList.toggle("current", i === rank && state !== "done");
        if (i === rank) step.setAttribute("aria-current", "step");
        else step.removeAttribute("aria-current");
      });
      last.textContent = state === "failed" ? "Failed" : "Done";
      if (said.textContent !== SAYS[state]) said.textContent = SAYS[state] || "";
      this.tick(state, seconds);
    },
    tick(state, seconds) {
      const time = durationText(seconds * 1000);
      elapsed.textContent = state === "done" ? `done in ${time}` : state === "failed" ? `after ${time}` : time;
    },
  };
}

function buildStage() {
  const original = h("img", { class: "bg-original", alt: "", "data-testid": "bg-original" });
  const cutout = h("img", { class: "bg-cutout", alt: "The photo without its background", "data-testid": "bg-cutout" });
  const placeholder = h("p", { class: "bg-placeholder", text: "Your photo appears here." });
  const canvas = h("div", { class: "bg-canvas checker" }, [placeholder, original, cutout]);
  const caption = h("figcaption", { class: "bg-caption", "data-testid": "bg-caption" });
  const png = h("a", { class: "button primary bg-download", "data-testid": "download-png", text: "Download PNG" });
  const mask = h("a", { class: "button subtle bg-download", "data-testid": "download-mask", text: "Download mask" });
  const error = h("p", { class: "job-error bg-error", "data-testid": "bg-error", role: "alert", hidden: true });
  const downloads = h("div", { class: "bg-downloads", hidden: true }, [png, mask]);
  const element = h("figure", { class: "bg-stage", "data-testid": "bg-stage", "data-state": "empty" }, [
    canvas, error, h("div", { class: "bg-under" }, [caption, downloads]),
  ]);
  original.addEventListener("error", () => {
    original.removeAttribute("src");
    placeholder.textContent = "No preview: this browser cannot show the file; the server may still read it.";
  });

  return {
    element,
    showOriginal(url) {
      element.dataset.state = url ? "processing" : "empty";
      placeholder.textContent = "Your photo appears here.";
      if (url) original.src = url;
      else original.removeAttribute("src");
      cutout.removeAttribute("src");
      caption.textContent = "";
      downloads.hidden = true;
      error.hidden = true;
    },
    /** A run is on its way: the photo dimmed, or the last cutout while it is redone. */
    processing() {
      element.dataset.state = cutout.getAttribute("src") ? "updating" : "processing";
      error.hidden = true;
    },
    showJob(job) {
      const result = job.result || {};
      const name = stem(job);
      if (job.input_file && job.input_file.url) original.src = job.input_file.url;
      cutout.src = result.cutout.url;
      element.dataset.state = "done";
      element.dataset.jobId = job.id;
      png.href = result.cutout.url;
      png.download = `${name}-cutout.png`;
      mask.href = result.mask.url;
      mask.download = `${name}-mask.png`;
      caption.replaceChildren(...[
        h("span", { text: result.avatar_box ? "512×512 avatar" : dimensions(result) }),
        result.cutout.size ? h("span", { text: `${sizeText(result.cutout.size)} PNG` }) : null,
        result.subject_box === null ? h("span", { class: "note", text: "No subject found: everything counts as background." }) : null,
        job.model_version ? h("span", { class: "model", title: "The model's name@version", text: job.model_version }) : null,
      ].filter(Boolean));
      downloads.hidden = false;
      error.hidden = true;
    },
    fail(message) {
      element.dataset.state = "failed";
      setMessage(error, message || "The job failed.");
      error.hidden = false;
      downloads.hidden = true;
    },
  };
}

export function mount(container, { serving, spec, socket, jobs, banner, api }) {
  const widget = new UploadWidget({ serving, spec, url: api.uploads });
  const options = buildOptions();
  const status = buildStatus();
  const stage = buildStage();
  const submit = h("button", { type: "submit", class: "button primary", "data-testid": "submit-job", text: "Remove background", disabled: true });
  const form = h("form", { class: "bg-app job-form", novalidate: true, "data-testid": "job-form" }, [
    widget.element,
    options.element,
    h("div", { class: "actions bg-actions" }, [submit, status.element]),
    stage.element,
  ]);
  container.replaceChildren(form);
  banner.titles.invalid_input = "Check the photo";

  const seen = new Map(); // job id -> the latest state pushed (it may come before the POST's answer)
  let run = null; // the latest run: {jobId, state, started}
  let seq = 0;
  let ticker = null;

  function elapsed() {
    return run ? (performance.now() - run.started) / 1000 : 0;
  }

  function setState(state) {
    if (!run) return;
    run.state = state;
    status.set(state, elapsed());
    const live = state === "uploading" || state === "queued" || state === "running";
    submit.disabled = !widget.file;
    clearInterval(ticker);
    ticker = live ? setInterval(() => status.tick(state, elapsed()), TICK_MS) : null;
  }

  function apply(job) {
    if (!run || !job || String(job.id) !== run.jobId) return;
    const rank = { queued: 1, running: 2, done: 3, failed: 3 }[job.status];
    if (rank === undefined || rank < STEP_RANK[run.state]) return; // a late, older state
    if (job.status === "done") {
      setState("done");
      if (hasCutout(job)) {
        stage.showJob(job);
      } else {
        stage.fail("The job finished without a cutout.");
      }
    } else if (job.status === "failed") {
      setState("failed");
      stage.fail(job.error);
    } else {
      setState(job.status);
      stage.processing();
    }
  }

  function remember(job) {
    if (!job || !job.id) return;
    const id = String(job.id);
    const before = seen.get(id);
    if (!before || (STEP_RANK[job.status] || 0) >= (STEP_RANK[before.status] || 0)) seen.set(id, job);
    apply(seen.get(id));
  }

  async function start() {
    if (!widget.file) return;
    const mine = ++seq;
    run = { jobId: null, state: "uploading", started: performance.now() };
    setState("uploading");
    stage.processing();
    const upload = await widget.upload();
    if (mine !== seq) return; // another photo or other options since
    if (!upload) { // the widget says why, in place
      run = null;
      clearInterval(ticker);
      status.set("idle", 0);
      stage.showOriginal(null);
      return;
    }
    const answer = await postJson(api.jobs, { serving, input: { file: upload.id, ...options.values() } });
    if (mine !== seq) return;
    if (!answer.ok || !answer.body.id) {
      setState("failed");
      banner.show(answer.error.code, answer.error.message, "save");
      stage.fail(answer.error.message);
      return;
    }
    banner.clear("save");
    run.jobId = String(answer.body.id);
    jobs.upsert(answer.body);
    remember(answer.body);
  }

  widget.onChange((file) => {
    seq += 1; // whatever ran before is for another photo
    run = null;
    clearInterval(ticker);
    status.set("idle", 0);
    form.classList.toggle("has-file", Boolean(file));
    stage.showOriginal(file ? widget.previewUrl : null);
    submit.disabled = !file;
    if (file) start();
  });
  // Each option change is one event (a colour input's `change` comes when its picker
  // closes), so it runs again at once; an older run still on its way is superseded.
  options.element.addEventListener("change", start);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });

  socket.on("job", (message) => remember(message.job));
  socket.on("jobs", (message) => (Array.isArray(message.jobs) ? message.jobs : []).forEach(remember));

  openInStage = (job) => {
    if (!hasCutout(job)) return;
    seq += 1;
    run = null;
    clearInterval(ticker);
    status.set("idle", 0);
    stage.showJob(job);
    stage.element.scrollIntoView({ behavior: "smooth", block: "nearest" });
  };
}
