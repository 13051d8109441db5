/* Transcription: record from the microphone (with a live transcript) or upload a file;
 * each job's transcript grows window by window, then shows timed segments that
 * play the audio from where they start, the language, and .txt/.srt/.vtt downloads.
 *
 * Recording: MediaRecorder keeps the chunks; every few seconds the audio so far
 * is uploaded (POST /api/uploads) and sent as a live `predict` over the socket
 * (one at a time; only the newest request's answer is shown). Stop uploads the
 * whole recording and submits it as a job:
 *
 *   {"serving": "transcription", "input": {"file": "<upload id>", "language": "", "task": "transcribe", "timestamps": true}}
 */
import { h, sizeText } from "../dom.js";
import { postForm, postJson } from "../http.js";
import { UploadWidget } from "../upload.js";

const LIVE_EVERY_MS = 3000; // how often the audio recorded so far is transcribed live ...
const LIVE_EVERY_FRACTION = 0.1; // ... or every tenth of the time recorded, when that is longer:
// each request sends the whole recording again, so spacing them out as it grows keeps
// the uploads' bytes and the server's work per minute of recording bounded.
const LIVE_GIVE_UP_MS = 60000; // a live answer this late is taken as lost (a new request may go)
const LIVE_DETECTED_AFTER_S = 5; // a language detected on this much speech is kept for the later live requests
const CHUNK_MS = 1000; // MediaRecorder timeslice: how fresh "the audio so far" is
// The microphone as it is: the browser's voice-call processing (echo cancellation, noise
// suppression, gain control) leaves artefacts Whisper was not trained on.
const AUDIO_CONSTRAINTS = { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false };
const BITS_PER_SECOND = 32000; // Opus at 32 kb/s: more than Whisper hears (16 kHz mono)
// The codes Whisper knows (multilingual checkpoints); the server refuses others with its list.
const LANGUAGES = (
  "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu haw ha he hi hr ht hu hy id " +
  "is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd " +
  "si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh"
).split(" ");
const NAMES_FALLBACK = { jw: "Javanese", haw: "Hawaiian" };
const RECORDING_TYPES = [
  ["audio/webm;codecs=opus", "webm"],
  ["audio/webm", "webm"],
  ["audio/ogg;codecs=opus", "ogg"],
  ["audio/mp4", "m4a"],
];

let languageNames = null;
try {
  languageNames = new Intl.DisplayNames([navigator.language || "en", "en"], { type: "language" });
} catch (err) {
  languageNames = null;
}

/** "de" -> "German" (in the reader's language where the browser knows it). */
export function languageName(code) {
  if (!code) return "";
  if (NAMES_FALLBACK[code]) return NAMES_FALLBACK[code];
  try {
    const name = languageNames && languageNames.of(code);
    if (name && name !== code) return name.charAt(0).toUpperCase() + name.slice(1);
  } catch (err) {
    /* an unknown code: shown as it is */
  }
  return code;
}

/** 75.4 -> "1:15"; 3725 -> "1:02:05". */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const secs = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

function segmentsOf(partials) {
  return partials
    .filter((p) => p && typeof p === "object" && Array.isArray(p.segments))
    .flatMap((p) => p.segments);
}

function baseName(job) {
  const name = (job && job.input_file && job.input_file.name) || "transcript";
  return name.replace(/\.[^.]{1,5}$/, "") || "transcript";
}

function segmentList(segments, playable) {
  return h("ol", { class: "segments", "data-testid": "segments" }, segments.map((s) => {
    const time = h("span", { class: "segment-time", text: clock(s.start) });
    const text = h("span", { class: "segment-text", text: s.text });
    const attrs = { class: "segment", "data-testid": "segment", "data-start": String(s.start), "data-end": String(s.end) };
    return h("li", {}, [
      playable
        ? h("button", { ...attrs, type: "button", title: `Play from ${clock(s.start)}` }, [time, text])
        : h("span", attrs, [time, text]),
    ]);
  }));
}

/** The player of a job's original audio; clicking a segment plays it from the segment's start. */
function wirePlayer(view, audio) {
  const buttons = [...view.querySelectorAll("button.segment")];
  let local = null; // the file as a blob URL: seekable whatever the server says about ranges

  async function seekable() {
    if (local) return;
    local = fetch(audio.dataset.src, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((blob) => {
        audio.src = URL.createObjectURL(blob);
      });
    await local;
  }

  async function playFrom(start) {
    try {
      await seekable();
      if (audio.readyState < 1) await new Promise((resolve) => audio.addEventListener("loadedmetadata", resolve, { once: true }));
      audio.currentTime = start;
      await audio.play();
    } catch (err) {
      audio.replaceWith(h("p", { class: "job-error", text: "The recording could not be played in this browser." }));
    }
  }

  for (const button of buttons) button.addEventListener("click", () => playFrom(Number(button.dataset.start)));
  audio.addEventListener("play", () => {
    if (!local) seekable().then(() => audio.play()).catch(() => {});
  });
  audio.addEventListener("timeupdate", () => {
    const t = audio.currentTime;
    for (const button of buttons) {
      const on = t >= Number(button.dataset.start) && t < Number(button.dataset.end);
      button.classList.toggle("playing", on);
      if (on) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  });
}

/** A running job: the transcript so far, window by window (the progress bar is the list's). */
export function renderPartials(partials) {
  const segments = segmentsOf(partials);
  if (!segments.length) {
    return h("p", { class: "transcript-waiting muted", "data-testid": "transcript-waiting", text: "Transcribing… the text appears as each part is done." });
  }
  return h("div", { class: "transcript growing", "data-testid": "transcript" }, [segmentList(segments, false)]);
}

/** A finished job: language, timed segments that play the audio, downloads. */
export function renderResult(result, job) {
  if (!result || typeof result !== "object" || typeof result.text !== "string") return null;
  const files = result.files || {};
  const facts = [
    result.language ? h("span", { class: "chip small", "data-testid": "transcript-language", "data-code": result.language, title: result.language, text: languageName(result.language) }) : null,
    result.task === "translate" ? h("span", { class: "chip small", "data-tone": "positive", text: "→ English" }) : null,
    h("span", { class: "muted small", "data-testid": "transcript-duration", text: `${clock(result.duration)} of audio` }),
  ];
  if (result.no_speech || !result.text) {
    return h("div", { class: "transcript", "data-testid": "transcript" }, [
      h("div", { class: "transcript-head" }, facts),
      h("p", { class: "no-speech", "data-testid": "no-speech", text: "No speech was heard in this recording (silence or noise), so there is no text." }),
    ]);
  }
  const source = job && job.input_file && typeof job.input_file.url === "string" && job.input_file.url.startsWith("/") ? job.input_file.url : null;
  const audio = source ? h("audio", { controls: true, preload: "none", class: "transcript-audio", "data-testid": "transcript-audio", dataset: { src: source } }) : null;
  const segments = Array.isArray(result.segments) ? result.segments : [];
  const downloads = ["txt", "srt", "vtt"].filter((k) => files[k] && typeof files[k].url === "string").map((k) =>
    h("a", { class: "button subtle download", href: files[k].url, download: `${baseName(job)}.${k}`, "data-testid": `download-${k}`, title: `${files[k].name} · ${sizeText(files[k].size)}`, text: `.${k}` }));
  const copy = h("button", { type: "button", class: "button subtle", "data-testid": "copy-text", text: "Copy text" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(result.text);
      copy.textContent = "Copied";
    } catch (err) {
      copy.textContent = "Copy failed";
    }
  });
  const view = h("div", { class: "transcript", "data-testid": "transcript" }, [
    h("div", { class: "transcript-head" }, facts),
    audio,
    segments.length ? segmentList(segments, Boolean(audio)) : h("p", { class: "transcript-text", text: result.text }),
    h("div", { class: "transcript-actions" }, [
      downloads.length ? h("span", { class: "muted small", text: "Download" }) : null,
      ...downloads,
      copy,
    ]),
  ]);
  if (audio) wirePlayer(view, audio);
  return view;
}

function optionsPanel(spec) {
  const properties = (spec.options && spec.options.properties) || {};
  const language = h("select", { id: "tr-language", name: "language", "data-option": "language", "data-testid": "option-language" }, [
    h("option", { value: "", text: "Auto-detect" }),
    ...LANGUAGES.map((code) => ({ code, name: languageName(code) }))
      .sort((a, b) => a.name.localeCompare(b.name))
      .map(({ code, name }) => h("option", { value: code, text: `${name} (${code})` })),
  ]);
  language.value = (properties.language && properties.language.default) || "";
  const tasks = (properties.task && properties.task.enum) || ["transcribe", "translate"];
  const taskDefault = (properties.task && properties.task.default) || "transcribe";
  const taskLabels = { transcribe: "Transcribe", translate: "Translate" };
  const radios = tasks.map((task) => h("input", { type: "radio", name: "task", value: task, id: `tr-task-${task}`, "data-testid": `option-task-${task}` }));
  for (const radio of radios) radio.checked = radio.value === taskDefault;
  const timestamps = h("input", { type: "checkbox", id: "tr-timestamps", name: "timestamps", "data-testid": "option-timestamps" });
  timestamps.checked = !properties.timestamps || properties.timestamps.default !== false;

  const element = h("fieldset", { class: "options transcribe-options", "data-testid": "options" }, [
    h("legend", { text: "Options" }),
    h("div", { class: "options-grid" }, [
      h("div", { class: "option" }, [
        h("label", { for: "tr-language", text: "Language" }),
        language,
        h("p", { class: "help", text: "The language spoken; auto-detect listens to the first words." }),
      ]),
      h("div", { class: "option" }, [
        h("span", { class: "option-label", id: "tr-task-label", text: "Task" }),
        h("div", { class: "segmented", role: "radiogroup", "aria-labelledby": "tr-task-label" },
          radios.map((radio) => h("label", { for: radio.id }, [radio, h("span", { text: taskLabels[radio.value] || radio.value })]))),
        h("p", { class: "help", text: "Translate: English text from speech in any language." }),
      ]),
      h("div", { class: "option option-check" }, [
        h("label", { class: "check", for: "tr-timestamps" }, [timestamps, h("span", { text: "Timed segments" })]),
        h("p", { class: "help", text: "Off: one block of text per 30 s." }),
      ]),
    ]),
  ]);
  return {
    element,
    values: () => ({
      language: language.value,
      task: (radios.find((r) => r.checked) || { value: taskDefault }).value,
      timestamps: timestamps.checked,
    }),
  };
}

function recordingType() {
  if (!window.MediaRecorder) return null;
  for (const [type, ext] of RECORDING_TYPES) {
    if (!MediaRecorder.isTypeSupported || MediaRecorder.isTypeSupported(type)) return { type, ext };
  }
  return { type: "", ext: "webm" };
}

function microphoneProblem(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "Microphone access was refused. Allow it in the browser's site settings, or upload a file instead.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") return "No microphone was found. Connect one, or upload a file instead.";
  if (name === "NotReadableError") return "The microphone is busy in another application. Close it there and try again.";
  return `The microphone could not be started (${name || "unknown error"}). Upload a file instead.`;
}

function buildRecorder() {
  const el = {};
  el.button = h("button", { type: "button", class: "record-button", "data-testid": "record", "aria-pressed": "false" }, [
    h("span", { class: "record-dot", "aria-hidden": "true" }),
    h("span", { class: "record-label", text: "Record" }),
  ]);
  el.label = el.button.querySelector(".record-label");
  el.time = h("span", { class: "record-time", "data-testid": "record-time", text: "0:00" });
  el.levelFill = h("span", { class: "level-fill" });
  el.level = h("span", { class: "level", "aria-hidden": "true" }, [el.levelFill]);
  el.status = h("p", { class: "record-status", role: "status", "data-testid": "record-status", text: "Press Record and speak; a live transcript appears every few seconds. Stop saves the recording as a job." });
  el.liveStatus = h("span", { class: "live-status", "data-testid": "live-status" });
  el.liveText = h("p", { class: "live-text", "data-testid": "live-text" });
  el.live = h("div", { class: "live", "data-testid": "live", "data-state": "idle", "aria-live": "polite", hidden: true }, [
    h("div", { class: "live-head" }, [h("span", { class: "live-title", text: "Live transcript" }), el.liveStatus]),
    el.liveText,
  ]);
  el.element = h("section", { class: "way recorder", "data-testid": "recorder", "aria-labelledby": "tr-record-heading" }, [
    h("h3", { id: "tr-record-heading", text: "Record" }),
    h("div", { class: "record-row" }, [el.button, el.time, el.level]),
    el.status,
    el.live,
  ]);
  return el;
}

export function mount(container, { serving, spec, socket, jobs, banner, api }) {
  banner.titles.invalid_input = "Check the recording";
  const limits = spec.limits || {};
  const options = optionsPanel(spec);
  const rec = buildRecorder();
  const widget = new UploadWidget({ serving, spec, url: api.uploads });
  const submit = h("button", { type: "button", class: "button primary", "data-testid": "submit-job", disabled: true, text: "Transcribe file" });
  const submitStatus = h("span", { class: "save-status", role: "status", "data-testid": "submit-status" });
  const uploader = h("section", { class: "way uploader", "aria-labelledby": "tr-upload-heading" }, [
    h("h3", { id: "tr-upload-heading", text: "Upload a file" }),
    widget.element,
    h("div", { class: "actions" }, [submit, submitStatus]),
  ]);
  container.replaceChildren(h("div", { class: "transcribe", "data-testid": "transcribe" }, [
    options.element,
    h("div", { class: "ways" }, [rec.element, h("div", { class: "ways-or", "aria-hidden": "true" }, [h("span", { text: "or" })]), uploader]),
  ]));

  let submitting = false;
  const refreshSubmit = () => {
    submit.disabled = submitting || !widget.file;
  };
  widget.onChange(() => {
    submitStatus.textContent = "";
    refreshSubmit();
  });

  async function submitJob(uploadId, say) {
    const answer = await postJson(api.jobs, { serving, input: { file: uploadId, ...options.values() } });
    if (answer.ok && answer.body.id) {
      jobs.upsert(answer.body);
      banner.clear("save");
      say("Submitted. The transcript grows below as each part is done.");
      return true;
    }
    banner.show(answer.error.code, answer.error.message, "save");
    say("Not submitted.");
    return false;
  }

  submit.addEventListener("click", async () => {
    if (submitting || !widget.file) return;
    submitting = true;
    refreshSubmit();
    const say = (text) => {
      submitStatus.textContent = text;
    };
    try {
      say("Uploading…");
      const upload = await widget.upload();
      if (upload) await submitJob(upload.id, say);
      else say("Not submitted.");
    } finally {
      submitting = false;
      refreshSubmit();
    }
  });

  // --- Recording ---------------------------------------------------------------------
  const kind = recordingType();
  const supported = Boolean(kind && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  if (!supported) {
    rec.button.disabled = true;
    rec.status.textContent = window.isSecureContext === false
      ? "Recording needs a secure (HTTPS) page; upload a file instead."
      : "This browser cannot record audio; upload a file instead.";
  }

  let session = null; // the recording in progress: {recorder, stream, chunks, started, ...}
  let liveRequest = 0; // the one live request whose answer is shown
  let liveSentAt = 0;
  const maxSeconds = Number(limits.max_seconds) || 0;
  const maxBytes = Number(limits.max_bytes) || 0;

  function setLive(state, status, text) {
    rec.live.hidden = false;
    rec.live.dataset.state = state;
    rec.liveStatus.textContent = status;
    if (text !== undefined) rec.liveText.textContent = text;
  }

  function recordingBlob(s) {
    return new Blob(s.chunks, { type: s.recorder.mimeType || kind.type || "audio/webm" });
  }

  function elapsed(s) {
    return (performance.now() - s.started) / 1000;
  }

  function inFlight() {
    return liveRequest !== 0 && performance.now() - liveSentAt < LIVE_GIVE_UP_MS;
  }

  async function sendLive(s) {
    if (session !== s || inFlight() || !s.chunks.length || !socket.isOpen) return;
    const seconds = elapsed(s);
    const blob = recordingBlob(s);
    if (maxBytes && blob.size > maxBytes) return;
    liveRequest = -1; // an upload is on its way: no second one meanwhile
    liveSentAt = performance.now();
    // live: deleted on the server once its prediction is answered (nothing piles up while recording)
    const answer = await postForm(api.uploads, { serving, live: "true", file: new File([blob], `live.${kind.ext}`, { type: blob.type }) });
    if (session !== s) {
      liveRequest = 0;
      return;
    }
    if (!answer.ok) {
      liveRequest = 0;
      setLive("error", answer.error.message);
      return;
    }
    const id = socket.requestId();
    liveRequest = id;
    liveSentAt = performance.now();
    rec.live.dataset.requestId = String(id);
    const input = { file: answer.body.id, ...options.values() };
    if (!input.language && s.language) input.language = s.language; // detected once, not on every request
    if (!socket.send({ type: "predict", serving, input, request_id: id })) {
      liveRequest = 0;
      setLive("waiting", "Waiting for the connection…");
      return;
    }
    setLive("transcribing", `Transcribing the first ${Math.round(seconds)} s…`);
  }

  socket.on("prediction", (message) => {
    if (!message.request_id || message.request_id !== liveRequest) return; // stale, or not ours
    liveRequest = 0;
    if (!session) return;
    const result = message.result || {};
    const covered = `first ${Math.round(Number(result.duration) || 0)} s`;
    if (result.text && result.language && Number(result.duration) >= LIVE_DETECTED_AFTER_S) session.language = result.language;
    if (result.no_speech || !result.text) setLive("listening", `Nothing heard yet · ${covered}`, "");
    else setLive("listening", `${languageName(result.language)} · ${covered}`, result.text);
  });
  socket.on("error", (message) => {
    if (!message.request_id || message.request_id !== liveRequest) return;
    liveRequest = 0;
    if (session) setLive("error", message.message || "The live transcript failed.");
  });
  socket.on("close", () => {
    if (liveRequest > 0) liveRequest = 0; // its answer was lost with the socket
  });

  function tick(s) {
    if (session !== s) return;
    const seconds = elapsed(s);
    rec.time.textContent = clock(seconds);
    if (maxSeconds && seconds >= maxSeconds - 1) {
      stop(`The recording reached the limit of ${clock(maxSeconds)}; it was stopped and saved.`);
      return;
    }
    const every = Math.max(LIVE_EVERY_MS, seconds * 1000 * LIVE_EVERY_FRACTION);
    if (performance.now() - s.liveAt >= every && !inFlight()) {
      s.liveAt = performance.now();
      sendLive(s);
    }
  }

  function meter(s, stream) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    try {
      s.audio = new Context();
      const analyser = s.audio.createAnalyser();
      analyser.fftSize = 1024;
      s.audio.createMediaStreamSource(stream).connect(analyser);
      const data = new Float32Array(analyser.fftSize);
      const draw = () => {
        if (session !== s) return;
        analyser.getFloatTimeDomainData(data);
        let sum = 0;
        for (const v of data) sum += v * v;
        const db = 10 * Math.log10(sum / data.length || 1e-10);
        const level = Math.min(1, Math.max(0, (db + 60) / 60));
        rec.levelFill.style.width = `${(level * 100).toFixed(0)}%`;
        s.frame = requestAnimationFrame(draw);
      };
      draw();
    } catch (err) {
      s.audio = null; // no meter; recording works without it
    }
  }

  async function start() {
    if (session || !supported) return;
    banner.clear("record");
    rec.button.disabled = true;
    rec.status.textContent = "Asking for the microphone…";
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CONSTRAINTS });
    } catch (err) {
      rec.button.disabled = false;
      rec.status.textContent = microphoneProblem(err);
      rec.element.dataset.state = "refused";
      return;
    }
    let recorder;
    try {
      recorder = new MediaRecorder(stream, { mimeType: kind.type || undefined, audioBitsPerSecond: BITS_PER_SECOND });
    } catch (err) {
      recorder = new MediaRecorder(stream);
    }
    const now = performance.now();
    const s = { recorder, stream, chunks: [], started: now, liveAt: now, timers: [] };
    session = s;
    liveRequest = 0;
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data && event.data.size) s.chunks.push(event.data);
    });
    recorder.addEventListener("stop", () => finish(s));
    recorder.start(CHUNK_MS);
    meter(s, stream);
    s.timers.push(setInterval(() => tick(s), 250));
    rec.element.dataset.state = "recording";
    rec.button.disabled = false;
    rec.button.setAttribute("aria-pressed", "true");
    rec.label.textContent = "Stop";
    rec.status.textContent = "Recording… press Stop when you are done.";
    rec.time.textContent = "0:00";
    setLive("listening", "Listening…", "");
  }

  function stop(note) {
    const s = session;
    if (!s || s.stopping) return;
    s.stopping = true;
    s.note = note;
    rec.button.disabled = true;
    rec.status.textContent = "Finishing the recording…";
    s.recorder.stop(); // its last chunk, then "stop" -> finish()
  }

  async function finish(s) {
    for (const timer of s.timers) clearInterval(timer);
    cancelAnimationFrame(s.frame);
    for (const track of s.stream.getTracks()) track.stop();
    if (s.audio) s.audio.close().catch(() => {});
    session = null;
    liveRequest = 0;
    rec.levelFill.style.width = "0%";
    rec.element.dataset.state = "saving";
    rec.button.setAttribute("aria-pressed", "false");
    rec.label.textContent = "Record";
    const seconds = elapsed(s);
    const blob = recordingBlob(s);
    const say = (text) => {
      rec.status.textContent = s.note ? `${s.note} ${text}` : text;
    };
    if (rec.live.dataset.state !== "error") rec.live.dataset.state = "done";
    rec.liveStatus.textContent = "The full transcript is in the job below.";
    try {
      if (!blob.size) {
        say("Nothing was recorded; try again.");
        return;
      }
      if (maxBytes && blob.size > maxBytes) {
        say(`The recording is ${sizeText(blob.size)}; the limit is ${sizeText(maxBytes)}. Record a shorter one.`);
        return;
      }
      say(`Uploading the recording (${clock(seconds)}, ${sizeText(blob.size)})…`);
      const stamp = new Date().toISOString().slice(0, 19).replace("T", " ").replace(/:/g, "-");
      const answer = await postForm(api.uploads, { serving, file: new File([blob], `Recording ${stamp}.${kind.ext}`, { type: blob.type }) });
      if (!answer.ok) {
        banner.show(answer.error.code, answer.error.message, "record");
        say("Not saved: see the message above.");
        return;
      }
      say("Submitting…");
      await submitJob(answer.body.id, say);
    } finally {
      rec.element.dataset.state = "idle";
      rec.button.disabled = false;
    }
  }

  rec.button.addEventListener("click", () => (session ? stop() : start()));
}
