// Experiment view (#/exp/<id>?tab=…): header with badges, tabs, and the experiment's SSE stream, whose events
// are forwarded to the active tab (so switching tabs does not reconnect).
import { expUrl } from "../api.js";
import { debounce, fmtTime, h, mount, shortId } from "../dom.js";
import { openStream } from "../sse.js";
import { experiment, on, refreshExperiments } from "../state.js";
import { reportError } from "../toast.js";
import { renderAblation } from "./ablation.js";
import { renderCheckpoints } from "./checkpoints.js";
import { renderConfig } from "./config.js";
import { renderMetrics } from "./metrics.js";
import { runInfo } from "./runinfo.js";

const TABS = { charts: ["Charts", renderMetrics], ablation: ["Ablation", renderAblation], checkpoints: ["Checkpoints", renderCheckpoints], config: ["Config", renderConfig] };

const FINISHED = new Set(["completed", "failed", "stopped", "cancelled", "interrupted"]);

export const typeBadge = (type) => h("span", { class: `badge badge-type type-${type}` }, type === "unknown" ? "?" : type.toUpperCase());
export const statusBadge = (status) => h("span", { class: `badge badge-status status-${status || "unknown"}` }, status || "unknown");

/** Why a failed run failed: its error and the tail of its log, so an empty chart is never the whole story. */
function runFailure(exp) {
  if (exp.status !== "failed" || !(exp.error || exp.logTail)) return null;
  return h("section", { class: "run-failure", "data-testid": "run-failure" },
    exp.error && h("p", { class: "run-error", "data-testid": "run-error" }, exp.error),
    exp.logTail && h("details", { open: true }, h("summary", {}, "End of the run's log"),
      h("pre", { class: "log-tail run-log-tail", "data-testid": "run-log-tail" }, exp.logTail)));
}

export function renderExperiment(root, route) {
  const exp = experiment(route.id);
  if (!exp) {
    mount(root, h("div", { class: "empty-state" }, h("h2", {}, "Experiment not found"), h("p", { class: "muted" }, `No experiment "${route.id}" in the experiments directory.`), h("a", { class: "btn", href: "#/" }, "Back to the overview")));
    // a job may create it any moment: re-route once the list (refreshed on job updates) has it
    const off = on("experiments", () => { if (experiment(route.id)) window.dispatchEvent(new HashChangeEvent("hashchange")); });
    return { dispose: off };
  }
  let tab = {}, tabName = "";
  const statusSlot = h("span", {}, statusBadge(exp.status));
  const livePill = h("span", { class: "live-pill", hidden: !exp.live }, h("i", { class: "live-dot" }), "live");
  const tabBar = h("nav", { class: "tabs", role: "tablist" });
  const body = h("div", { class: "tab-body" });
  const source = exp.sourceExperiment && h("span", {}, "from ", h("a", { href: `#/exp/${encodeURIComponent(exp.sourceExperiment)}` }, shortId(exp.sourceExperiment)));
  mount(root, h("div", { class: "page-head" },
    h("div", { class: "title-row" }, typeBadge(exp.type), h("h1", { class: "exp-title", title: exp.id }, exp.id), statusSlot, livePill),
    h("div", { class: "meta muted" }, h("span", {}, `created ${fmtTime(exp.createdAt)}`), h("span", {}, `updated ${fmtTime(exp.lastUpdate)}`), source),
    runInfo(exp), runFailure(exp)), tabBar, body);

  const refreshList = debounce(() => refreshExperiments().catch(reportError), 500);
  // The server sends a heartbeat once the stream's subscription is in place; tabs load their history after it, so
  // a record logged right after the history was read still arrives live. A dead stream must not block the charts.
  let markReady;
  const ready = new Promise((resolve) => { markReady = resolve; setTimeout(resolve, 3000); });
  const close = openStream(expUrl(exp.id, "stream"), {
    heartbeat: () => markReady(),
    metrics: (d) => tab.onEvent?.("metrics", d),
    "rl-metrics": (d) => tab.onEvent?.("rl-metrics", d),
    status: (d) => {
      if (!d?.status) return;
      statusSlot.replaceChildren(statusBadge(d.status));
      livePill.hidden = FINISHED.has(d.status);
      refreshList();
    },
  }, { onReconnect: () => tab.onReconnect?.() });

  function show(name) {
    const available = Object.keys(TABS).filter((t) => t !== "ablation" || exp.hasAblation);
    if (!available.includes(name)) name = "charts";
    if (name === tabName) return;
    tab.dispose?.();
    tabName = name;
    mount(tabBar, available.map((t) => h("a", { class: t === name ? "tab active" : "tab", role: "tab", "aria-selected": String(t === name), href: `#/exp/${encodeURIComponent(exp.id)}?tab=${t}`, "data-tab": t }, TABS[t][0])));
    mount(body);
    tab = TABS[name][1](body, exp, ready) || {};
  }
  show(route.params.get("tab") || "charts");
  // a run that just started may still be "unknown": rebuild the view once the list knows its type or has results
  let stale = false;
  const offList = on("experiments", () => {
    const now = experiment(exp.id);
    if (now && (now.type !== exp.type || now.hasAblation !== exp.hasAblation)) {
      stale = true;
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    }
  });

  return {
    update(next) {
      if (next.name !== "exp" || next.id !== exp.id || stale) return false;
      show(next.params.get("tab") || "charts");
      return true;
    },
    dispose() { close(); offList(); tab.dispose?.(); },
  };
}
