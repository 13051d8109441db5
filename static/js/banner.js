/* The page's error banner (#error in serving.html).
 *
 * Each message has a source ("predict", "save", "socket", …): a later success
 * clears only the message of its own source.
 *
 *   banner.show("model_not_installed", "Install it with `python -m …`", "predict");
 *   banner.clear("predict");
 */
import { setMessage } from "./dom.js";

const TITLES = {
  model_not_installed: "The model is not installed",
  invalid_input: "Check the input",
  unknown_serving: "Unknown serving",
  serving_failed: "The model failed",
  integrity_error: "The model files do not match their pinned hash",
  internal_error: "Something went wrong on the server",
  invalid_json: "The request was not understood",
  csrf_failed: "The page is out of date",
  network_error: "The server could not be reached",
  too_large: "The file is too large",
  quota_exceeded: "Your storage is full",
  timeout: "The model took too long",
  too_many_jobs: "Too many jobs at once",
  too_many_predictions: "Too many live predictions at once",
  overloaded: "The servings are busy",
  queue_unavailable: "The task queue is unreachable",
  reconnecting: "Reconnecting",
  lost: "The job was lost",
  unserved: "No worker serves this",
};

export class Banner {
  constructor(root) {
    this.root = root;
    this.title = root.querySelector("[data-banner=title]");
    this.message = root.querySelector("[data-banner=message]");
    this.code = root.querySelector("[data-banner=code]");
    this.source = null;
    this.titles = { ...TITLES };
    root.querySelector("[data-banner=dismiss]").addEventListener("click", () => this.clear());
  }

  show(code, message, source) {
    this.source = source || null;
    this.title.textContent = this.titles[code] || "Something went wrong";
    setMessage(this.message, message || "No details were given.");
    this.code.textContent = code ? `code: ${code}` : "";
    this.root.dataset.code = code || "";
    this.root.hidden = false;
  }

  /** Hide the banner; with `source`, only if it shows that source's message. */
  clear(source) {
    if (source && this.source !== source) return;
    this.source = null;
    this.root.hidden = true;
    this.root.dataset.code = "";
  }
}
