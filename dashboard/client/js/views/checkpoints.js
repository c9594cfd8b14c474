// Checkpoints tab: every .pth of the run with its phase, and shortcuts into the generation panel and the RL job form.
import { api, expUrl } from "../api.js";
import { fmtBytes, fmtTime, h } from "../dom.js";
import { reportError } from "../toast.js";

const LM_PHASES = new Set(["final", "foundational"]);
const link = (label, hash, title) => h("a", { class: "btn small", href: hash, title }, label);

/** The LM checkpoint an RL run was trained from, as an API path (the server records it as an absolute path). */
export const sourceCheckpointPath = (exp) =>
  exp.sourceExperiment && exp.sourceCheckpoint ? `experiments/${exp.sourceExperiment}/${exp.sourceCheckpoint.split("/").pop()}` : "";

function actions(exp, c) {
  const q = (params) => new URLSearchParams(params).toString();
  if (LM_PHASES.has(c.phase)) {
    return [link("Generate with this", `#/generate?${q({ checkpoint: c.path })}`),
      link("Train RL from this", `#/jobs?${q({ type: "rl-training", checkpoint: c.path })}`, "Open the job form with this checkpoint")];
  }
  if (c.phase === "rl") {
    const params = { rlCheckpoint: c.path, mode: "learned" };
    if (sourceCheckpointPath(exp)) params.checkpoint = sourceCheckpointPath(exp);
    return [link("Generate with this", `#/generate?${q(params)}`, "Learned gating with this agent")];
  }
  return [];
}

export function renderCheckpoints(root, exp) {
  const body = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading checkpoints…"));
  root.append(body);
  api(expUrl(exp.id, "checkpoints")).then(({ checkpoints }) => {
    if (!checkpoints.length) return body.replaceChildren(h("p", { class: "muted" }, "No checkpoints saved yet."));
    checkpoints.sort((a, b) => b.modified - a.modified);
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["Filename", "Phase", "Epoch / iter", "Size", "Modified", ""].map((t, i) => h("th", { class: i === 2 || i === 3 ? "num" : "" }, t)))),
      h("tbody", {}, checkpoints.map((c) => h("tr", { "data-testid": "checkpoint-row", "data-path": c.path },
        h("td", { class: "mono" }, c.filename), h("td", {}, h("span", { class: `badge phase-${c.phase}` }, c.phase)),
        h("td", { class: "num" }, c.epoch ?? "–"), h("td", { class: "num" }, fmtBytes(c.sizeBytes)), h("td", {}, fmtTime(c.modified)),
        h("td", { class: "actions" }, actions(exp, c))))))));
  }).catch((err) => { body.replaceChildren(h("p", { class: "muted" }, "Could not load the checkpoints.")); reportError(err); });
  return {};
}
