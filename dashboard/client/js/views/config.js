// Config tab: the YAML files saved with the run, and (LM) the evaluation results as a key/value table.
import { api, expUrl } from "../api.js";
import { fmtNum, fmtTime, h, mount } from "../dom.js";
import { reportError } from "../toast.js";

function evaluationTable(results) {
  const scalars = Object.entries(results).filter(([, v]) => v === null || typeof v !== "object");
  const samples = Array.isArray(results.samples) ? results.samples : [];
  return h("section", { class: "card" }, h("h3", {}, "Evaluation"),
    h("table", { class: "table kv" }, h("tbody", {}, scalars.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, k === "timestamp" ? fmtTime(v) : typeof v === "number" ? fmtNum(v, 6) : String(v)))))),
    samples.length > 0 && h("div", { class: "samples" }, h("h4", {}, "Samples"),
      samples.map((s) => h("p", { class: "sample" }, h("b", {}, s.prompt), String(s.generated ?? "").slice(String(s.prompt ?? "").length)))));
}

export function renderConfig(root, exp) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading configuration…"));
  root.append(body);
  Promise.all([api(expUrl(exp.id, "config")), exp.hasEvaluation ? api(expUrl(exp.id, "evaluation")) : null]).then(([cfg, ev]) => {
    mount(body,
      ev?.results && evaluationTable(ev.results),
      cfg.files.length ? cfg.files.map((f) => h("section", { class: "card" }, h("h3", { class: "mono" }, f.filename, f.truncated && h("small", { class: "muted" }, " (truncated)")), h("pre", { class: "code" }, f.content)))
        : h("p", { class: "muted" }, "No config files were saved with this run."));
  }).catch((err) => { body.replaceChildren(h("p", { class: "muted" }, "Could not load the configuration.")); reportError(err); });
  return {};
}
