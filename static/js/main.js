/* The page of one serving (templates/serving.html), as native ES modules.
 *
 * It reads the page's configuration (data attributes of #app and the
 * json_script blocks: the serving's spec, the owner's recent jobs), draws the
 * jobs list, loads the serving's renderer (renderers/<spec.renderer>.js, else
 * the one for its kind) and mounts it, then opens the websocket:
 *
 *   <div id="app" data-serving="sentiment" data-ws-path="/ws/jobs"
 *        data-api-jobs="/api/jobs" data-api-uploads="/api/uploads">
 *   <script id="serving-spec" type="application/json">{"kind": "text", …}</script>
 *   <script id="initial-jobs" type="application/json">[…]</script>
 *
 * A renderer module exports mount(container, {serving, spec, socket, jobs,
 * banner, api}) and, optionally, renderResult(result, job) and
 * renderPartials(partials, job) for the rows of the jobs list.
 */
import { Banner } from "./banner.js";
import { JobsList } from "./jobs.js";
import { JobsSocket } from "./socket.js";

const RENDERER_NAME = /^[a-z0-9_-]+$/;

function readJson(id, fallback) {
  const node = document.getElementById(id);
  if (!node) return fallback;
  try {
    return JSON.parse(node.textContent);
  } catch (err) {
    return fallback;
  }
}

/** The serving's own renderer, else the generic one for its kind. */
async function loadRenderer(spec) {
  const names = [spec.renderer, spec.kind, "json"].filter((n, i, all) => typeof n === "string" && RENDERER_NAME.test(n) && all.indexOf(n) === i);
  let failure = null;
  for (const name of names) {
    try {
      return await import(`./renderers/${name}.js`);
    } catch (err) {
      failure = err;
      console.warn(`renderer ${name} did not load; trying the next one`, err);
    }
  }
  throw failure;
}

async function start(app) {
  const config = {
    serving: app.dataset.serving,
    wsPath: app.dataset.wsPath || "/ws/jobs",
    api: { jobs: app.dataset.apiJobs || "/api/jobs", uploads: app.dataset.apiUploads || "/api/uploads" },
    spec: readJson("serving-spec", {}),
    jobs: readJson("initial-jobs", []),
  };
  const banner = new Banner(document.getElementById("error"));
  const socket = new JobsSocket(config.wsPath, document.getElementById("connection"));
  socket.on("open", () => banner.clear("socket"));
  socket.on("error", (message) => {
    if (message.request_id === undefined || message.request_id === null) banner.show(message.code, message.message, "socket");
  });

  const container = document.getElementById("serving-ui");
  let renderer = {};
  try {
    renderer = await loadRenderer(config.spec);
  } catch (err) {
    container.replaceChildren();
    banner.show("internal_error", "The page's input form did not load; reload the page to try again.", "page");
  }
  const jobs = new JobsList(document.getElementById("jobs"), document.getElementById("jobs-empty"), {
    serving: config.serving,
    view: renderer,
  });
  jobs.snapshot(config.jobs);
  jobs.watch(socket);
  if (renderer.mount) {
    renderer.mount(container, { serving: config.serving, spec: config.spec, socket, jobs, banner, api: config.api });
  }
  socket.connect();
}

// On a narrow screen the nav scrolls sideways: keep the current serving in view.
const current = document.querySelector(".site-links [aria-current=page]");
if (current) current.scrollIntoView({ block: "nearest", inline: "nearest" });

const app = document.getElementById("app");
if (app) start(app);
