/* A drag-and-drop file widget for a file serving (image or audio kind).
 *
 * Drop zone and file picker (accepting the spec's content types), an instant
 * preview (images through an object URL, audio in <audio controls>), the size
 * checked against spec.limits.max_bytes before anything is sent, the upload
 * itself with a progress bar (POST /api/uploads: `serving`, `file`), and the
 * server's refusal shown in place:
 *
 *   const widget = new UploadWidget({serving: "files", spec, url: "/api/uploads"});
 *   container.append(widget.element);
 *   widget.onChange(() => submit.disabled = !widget.file);
 *   const upload = await widget.upload();     // the upload's JSON ({"id", …}), or null (error shown)
 */
import { h, setMessage, sizeText } from "./dom.js";
import { postForm } from "./http.js";

let widgetSeq = 0;

function formatList(formats) {
  const names = (formats || []).map((f) => f.toUpperCase());
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names[names.length - 1]}` : names.join("");
}

export class UploadWidget {
  constructor({ serving, spec, url }) {
    this.serving = serving;
    this.spec = spec;
    this.url = url;
    this.file = null;
    this.uploaded = null; // {file, body}: the chosen file's upload, reused by later submits
    this.previewUrl = null;
    this.listeners = [];
    const id = `upload-${++widgetSeq}`;
    const limits = spec.limits || {};
    const hint = [
      formatList(spec.formats),
      limits.max_bytes ? `up to ${sizeText(limits.max_bytes)}` : null,
      limits.max_seconds ? `at most ${limits.max_seconds} s` : null,
      limits.max_pixels ? `at most ${(limits.max_pixels / 1e6).toLocaleString()} megapixels` : null,
    ].filter(Boolean).join(" · ");

    this.input = h("input", {
      type: "file",
      id,
      class: "visually-hidden",
      accept: (spec.content_types || []).join(","),
      "aria-describedby": `${id}-hint`,
      "data-testid": "file-input",
    });
    this.zone = h("label", { class: "dropzone", for: id, "data-testid": "dropzone" }, [
      this.input,
      h("span", { class: "dropzone-icon", "aria-hidden": "true", text: spec.kind === "audio" ? "♪" : "⬆" }),
      h("span", { class: "dropzone-title", text: `Drop ${spec.kind === "audio" ? "an audio file" : "an image"} here, or choose one` }),
      h("span", { class: "dropzone-hint", id: `${id}-hint`, text: hint }),
    ]);
    this.preview = h("div", { class: "preview", "data-testid": "preview", hidden: true });
    this.bar = h("span", { class: "bar-fill", style: "width: 0%" });
    this.progressText = h("span", { class: "upload-progress-text", "data-testid": "upload-progress-text" });
    this.progress = h("div", { class: "upload-progress", "data-testid": "upload-progress", hidden: true }, [
      h("span", { class: "minibar wide", "aria-hidden": "true" }, [this.bar]),
      this.progressText,
    ]);
    this.errorMessage = h("p", { class: "banner-message", "data-testid": "upload-error-message" });
    this.errorCode = h("p", { class: "banner-code" });
    this.error = h("div", { class: "banner compact", role: "alert", "data-testid": "upload-error", hidden: true }, [
      h("div", { class: "banner-body" }, [this.errorMessage, this.errorCode]),
    ]);
    this.element = h("div", { class: "upload", "data-testid": "upload" }, [this.zone, this.preview, this.progress, this.error]);

    this.input.addEventListener("change", () => this.choose(this.input.files && this.input.files[0]));
    for (const type of ["dragenter", "dragover"]) {
      this.zone.addEventListener(type, (event) => {
        event.preventDefault();
        this.zone.classList.add("dragging");
      });
    }
    this.zone.addEventListener("dragleave", () => this.zone.classList.remove("dragging"));
    this.zone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.zone.classList.remove("dragging");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) this.choose(files[0]);
    });
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  showError(code, message) {
    setMessage(this.errorMessage, message);
    this.errorCode.textContent = code ? `code: ${code}` : "";
    this.error.dataset.code = code || "";
    this.error.hidden = false;
  }

  clearError() {
    this.error.hidden = true;
    this.error.dataset.code = "";
  }

  choose(file) {
    this.clearError();
    this.progress.hidden = true;
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = null;
    this.preview.replaceChildren();
    this.preview.hidden = true;
    this.file = null;
    const max = (this.spec.limits || {}).max_bytes;
    if (file && max && file.size > max) {
      this.showError("too_large", `${file.name} is ${sizeText(file.size)}; the limit is ${sizeText(max)}. Choose a smaller file.`);
      file = null;
    }
    if (file) {
      this.file = file;
      this.previewUrl = URL.createObjectURL(file);
      const media = this.spec.kind === "audio"
        ? h("audio", { controls: true, src: this.previewUrl, preload: "metadata", "data-testid": "preview-audio" })
        : h("img", { src: this.previewUrl, alt: `Preview of ${file.name}`, "data-testid": "preview-image" });
      media.addEventListener("error", () => {
        media.replaceWith(h("span", { class: "no-preview", "data-testid": "no-preview", text: "No preview: this browser cannot read the file." }));
      });
      const remove = h("button", { type: "button", class: "button subtle", "data-testid": "remove-file", text: "Remove" });
      remove.addEventListener("click", () => {
        this.input.value = "";
        this.choose(null);
      });
      this.preview.append(media, h("div", { class: "preview-meta" }, [
        h("span", { class: "file-name", "data-testid": "preview-name", text: file.name }),
        h("span", { class: "file-size", text: sizeText(file.size) }),
        remove,
      ]));
      this.preview.hidden = false;
    }
    for (const listener of this.listeners) listener(this.file);
  }

  setProgress(fraction, text) {
    this.progress.hidden = false;
    this.bar.style.width = `${(fraction * 100).toFixed(0)}%`;
    this.progressText.textContent = text;
  }

  /** Upload the chosen file (once per file); the server's answer, or null with the error shown. */
  async upload() {
    const file = this.file;
    if (!file) return null;
    if (this.uploaded && this.uploaded.file === file) return this.uploaded.body;
    this.clearError();
    this.setProgress(0, "Uploading… 0%");
    const answer = await postForm(this.url, { serving: this.serving, file }, (fraction) => {
      this.setProgress(fraction, `Uploading… ${(fraction * 100).toFixed(0)}%`);
    });
    if (!answer.ok) {
      this.progress.hidden = true;
      this.showError(answer.error.code, answer.error.message);
      return null;
    }
    this.setProgress(1, `Uploaded · ${sizeText(answer.body.size)} ${String(answer.body.format || "").toUpperCase()}`);
    this.uploaded = { file, body: answer.body };
    return answer.body;
  }
}
