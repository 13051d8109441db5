/* The /ws/jobs websocket: one per page, reconnecting with exponential backoff.
 *
 * Server messages are dispatched by their `type` to subscribers; two more
 * events tell about the connection itself:
 *
 *   const socket = new JobsSocket("/ws/jobs", document.getElementById("connection"));
 *   socket.on("job", (message) => jobs.upsert(message.job));   // also "jobs", "job.progress",
 *   socket.on("open", () => resend());                           // "prediction", "error", "close"
 *   socket.connect();
 *   const id = socket.requestId();
 *   socket.send({type: "predict", serving, input, request_id: id});   // false while offline
 *
 * The indicator element (data-state: connecting | open | closed) says
 * "Connecting…", "Live", "Offline · retrying in N s" then "Reconnecting…";
 * clicking it while offline retries at once, as does the browser going online.
 */

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

export class JobsSocket {
  constructor(path, indicator) {
    this.path = path;
    this.indicator = indicator;
    this.indicatorText = indicator ? indicator.querySelector("[data-connection=text]") : null;
    this.ws = null;
    this.attempts = 0;
    this.lastRequestId = 0;
    this.handlers = new Map();
    this.reconnectTimer = null;
    this.countdownTimer = null;
    window.addEventListener("online", () => this.retryNow());
    if (indicator) indicator.addEventListener("click", () => this.retryNow());
  }

  /** Call `handler(message)` for each message of `type`; returns a function that unsubscribes. */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.handlers.get(type).delete(handler);
  }

  get isOpen() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  /** A new request id, unique on this page (answers name the request they answer). */
  requestId() {
    this.lastRequestId += 1;
    return this.lastRequestId;
  }

  /** Send `message` as JSON; false (nothing sent) while the socket is not open. */
  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    this.setState("connecting", this.attempts ? "Reconnecting…" : "Connecting…");
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    let ws;
    try {
      ws = new WebSocket(scheme + window.location.host + this.path);
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.setState("open", "Live");
      this.emit("open", {});
    });
    ws.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      // The server is really there once it has sent the snapshot: only then is the backoff reset
      // (during a Redis outage it accepts, says "reconnecting" and closes with 4013).
      if (message.type === "jobs") this.attempts = 0;
      if (message.type === "error" && message.code === "reconnecting" && message.request_id == null) {
        this.setState("connecting", "Reconnecting…");
        return;
      }
      this.emit(message.type, message);
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.emit("close", {});
      this.scheduleReconnect();
    });
  }

  retryNow() {
    if (!this.ws) this.connect();
  }

  emit(type, message) {
    for (const handler of this.handlers.get(type) || []) {
      try {
        handler(message);
      } catch (err) {
        console.error(err); // one broken subscriber must not starve the others
      }
    }
  }

  setState(state, text) {
    if (!this.indicator) return;
    this.indicator.dataset.state = state;
    if (this.indicatorText) this.indicatorText.textContent = text;
  }

  scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempts += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      this.setState("closed", `Offline · retrying in ${left} s`);
    };
    tick();
    clearInterval(this.countdownTimer);
    this.countdownTimer = setInterval(tick, 1000);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }
}
