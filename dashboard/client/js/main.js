// Entry point: wires the shell (toast, dialogs, sidebar, header), loads the manifest and experiment list, keeps the
// jobs SSE stream open for the whole session, and routes location.hash to one view at a time.
import { api } from "./api.js";
import { loadUPlot } from "./charts.js";
import { initDialogs } from "./dialogs.js";
import { $, debounce, h } from "./dom.js";
import { openStream } from "./sse.js";
import { emit, refreshExperiments, state } from "./state.js";
import { initToast, reportError } from "./toast.js";
import { renderExperiment } from "./views/experiment.js";
import { renderGenerate } from "./views/generate.js";
import { renderJobs } from "./views/jobs.js";
import { renderOverview } from "./views/overview.js";
import { renderRuns } from "./views/runs.js";
import { initSidebar } from "./views/sidebar.js";

const VIEWS = { exp: renderExperiment, jobs: renderJobs, generate: renderGenerate, runs: renderRuns, overview: renderOverview };
let current = null;

/** "#/exp/<id>?tab=ablation" → {name: "exp", id, params}. */
function parseRoute() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  if (parts[0] === "exp" && parts[1]) return { name: "exp", id: parts[1], params };
  if (parts[0] === "jobs" || parts[0] === "generate" || parts[0] === "runs") return { name: parts[0], params };
  return { name: "overview", params };
}

function route() {
  const next = parseRoute();
  emit("route", next);
  for (const a of document.querySelectorAll(".nav a[data-nav]")) a.classList.toggle("active", a.dataset.nav === (next.name === "overview" ? "exp" : next.name));
  if (current?.update?.(next)) return; // same experiment, other tab: keep its stream and charts
  current?.dispose?.();
  const root = $("#view");
  root.replaceChildren();
  root.scrollTop = 0;
  try {
    current = VIEWS[next.name](root, next);
  } catch (err) {
    current = null;
    reportError(err);
  }
}

async function start() {
  initToast();
  initDialogs();
  // the chart library, the manifest and the experiment list load in parallel: the first view needs all three
  const [uplot, manifest] = await Promise.allSettled([loadUPlot(), api("/api/plugins/tidal"), refreshExperiments().catch(reportError)]);
  if (uplot.status === "rejected") {
    $(".layout").before(h("div", { class: "banner", role: "status" }, "Charts are unavailable: uPlot could not be loaded from /vendor/uplot/. Run ",
      h("code", {}, "make setup"), " (it installs the web client's npm dependencies) and reload."));
  }
  if (manifest.status === "fulfilled") state.manifest = manifest.value; else reportError(manifest.reason);
  initSidebar($("#experiment-list"), $("#experiment-count"), $(".sidebar-hint"));

  // one stream for job changes and log lines; the experiment list follows job updates (no polling)
  const refreshList = debounce(() => refreshExperiments().catch(reportError), 300);
  openStream("/api/jobs/stream", {
    "job-update": (job) => { emit("job-update", job); refreshList(); },
    "log-lines": (data) => emit("log-lines", data),
  }, { onReconnect: () => { refreshList(); emit("jobs-reconnect"); } });

  // chart colours are read from CSS: redraw when the OS theme flips
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => emit("theme"));
  window.addEventListener("hashchange", route);
  route();
}

start().catch(reportError);
