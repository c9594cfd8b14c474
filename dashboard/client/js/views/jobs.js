// Jobs view (#/jobs): start an LM or RL job (fields from the manifest's training phases), the job table kept
// current by job-update events, per-job controls, and a live log tail of the selected job (backlog + log-lines).
import { api } from "../api.js";
import { confirmDialog } from "../dialogs.js";
import { field, fmtTime, h, mount, select, shortId } from "../dom.js";
import { checkpointOptions, experiment, on, state } from "../state.js";
import { reportError } from "../toast.js";
import { statusBadge } from "./experiment.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
// which control makes sense in which state (the server's state machine: core/jobs.py)
const ENABLED = {
  complete: (s) => s === "running",
  stop: (s) => s === "running" || s === "completing",
  cancel: (s) => !TERMINAL.has(s),
};
const MAX_LOG_LINES = 5000;
const LEVEL = /\b(ERROR|CRITICAL|Traceback|WARNING)\b/;

/** The plugin config an LM checkpoint was trained with (train_rl rebuilds the model from it): the run's metadata
 * names it (`configPath`), and it is offered when it is one of the plugin's configs. */
function configOfCheckpoint(checkpointPath, files) {
  const run = experiment(checkpointPath.split("/")[1]);
  const file = run?.configPath?.split("/").pop();
  return files.includes(file) ? file : null;
}

function startForm(route, onStarted) {
  const phases = state.manifest?.trainingPhases || [];
  const configs = { lm: [], rl: [] };
  const type = select({ id: "job-type", name: "type" }, phases.map((p) => ({ value: p.id, label: p.displayName })), route.params.get("type") || phases[0]?.id);
  const config = h("select", { id: "job-config" }), rlConfig = h("select", { id: "job-rl-config" });
  const wanted = route.params.get("checkpoint");
  const ckptOptions = checkpointOptions("lm", (e) => e.status === "completed");
  if (wanted && !ckptOptions.some((o) => o.value === wanted)) ckptOptions.unshift({ value: wanted, label: wanted });
  const checkpoint = select({ id: "job-checkpoint" }, ckptOptions, wanted || ckptOptions.find((o) => o.phase === "final")?.value);
  const maxSteps = h("input", { id: "job-max-steps", type: "number", min: 1, step: 1, placeholder: "from config" });
  const timesteps = h("input", { id: "job-timesteps", type: "number", min: 1, step: 1, placeholder: "from config" });
  const rows = {
    rlConfig: field("RL config", rlConfig), checkpoint: field("LM checkpoint", checkpoint, ckptOptions.length ? "" : "No completed LM experiment yet"),
    maxSteps: field("Max steps (optional)", maxSteps), timesteps: field("Timesteps (optional)", timesteps),
  };
  const phase = () => phases.find((p) => p.id === type.value);
  const button = h("button", { id: "job-start", class: "btn primary", type: "submit" }, "Start job");

  // show only the fields the phase takes, with its default config files preselected
  function sync() {
    const p = phase();
    const args = p?.args || {};
    for (const [name, row] of Object.entries(rows)) row.hidden = !(name in args);
    const defaults = (p?.configFiles || []).map((f) => f.split("/").pop());
    const fill = (sel, files) => mount(sel, files.map((f) => h("option", { value: `configs/${f}`, selected: defaults.includes(f) }, f)));
    fill(config, configs.lm);
    fill(rlConfig, configs.rl);
    matchConfig();
  }
  const configHint = h("small", { class: "muted" });
  function matchConfig() {
    configHint.textContent = "";
    if (!("checkpoint" in (phase()?.args || {})) || !checkpoint.value) return;
    const file = configOfCheckpoint(checkpoint.value, configs.lm);
    if (file) {
      config.value = `configs/${file}`;
      configHint.textContent = "the config this checkpoint was trained with";
    }
  }
  checkpoint.addEventListener("change", matchConfig);
  api("/api/plugins/tidal/configs").then(({ files }) => {
    configs.lm = files.filter((f) => !f.startsWith("rl"));
    configs.rl = files.filter((f) => f.startsWith("rl"));
    sync();
  }).catch(reportError);
  type.addEventListener("change", sync);
  sync();

  async function submit(e) {
    e.preventDefault();
    const p = phase();
    if (!p) return reportError(new Error("No training phase in the manifest."));
    const body = { type: p.id, configPath: config.value };
    if (!rows.rlConfig.hidden) body.rlConfigPath = rlConfig.value;
    if (!rows.checkpoint.hidden) body.checkpoint = checkpoint.value || undefined;
    if (!rows.maxSteps.hidden && maxSteps.value) body.maxSteps = Math.round(Number(maxSteps.value));
    if (!rows.timesteps.hidden && timesteps.value) body.timesteps = Math.round(Number(timesteps.value));
    button.disabled = true;
    try {
      const { job } = await api("/api/jobs", { method: "POST", body, auth: true });
      onStarted(job);
    } catch (err) {
      reportError(err);
    } finally {
      button.disabled = false;
    }
  }
  return h("form", { id: "job-form", class: "card form", onsubmit: submit },
    h("h3", {}, "Start a job"),
    h("div", { class: "form-grid" }, field("Type", type), field("Config", config, configHint), rows.rlConfig, rows.checkpoint, rows.maxSteps, rows.timesteps),
    h("div", { class: "form-actions" }, button));
}

export function renderJobs(root, route) {
  const jobs = new Map();
  let selected = route.params.get("job"), buffer = null, follow = true, lastTs = -Infinity, chooseSeq = 0;
  const tbody = h("tbody");
  const logTitle = h("span", { class: "muted" }, "Select a job to follow its log.");
  const tail = h("div", { id: "log-tail", class: "log-tail", tabindex: 0 });
  tail.addEventListener("scroll", () => { follow = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 8; });

  mount(root, h("div", { class: "page-head" }, h("h1", {}, "Jobs")),
    startForm(route, (job) => { upsert(job); choose(job.jobId); }),
    h("section", { class: "card" }, h("h3", {}, "Jobs"), h("div", { class: "table-wrap" }, h("table", { class: "table jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Type", "Status", "Experiment", "Created", "Exit / error", ""].map((t) => h("th", {}, t)))), tbody))),
    h("section", { class: "card" }, h("div", { class: "log-head" }, h("h3", {}, "Log"), logTitle), tail));

  async function act(job, action) {
    if (action === "stop" && !(await confirmDialog("Stop this job?", `${job.jobId} will be asked to stop now. Use Complete instead to let it finish cleanly and save its final checkpoint.`, "Stop job"))) return;
    const path = action === "cancel" ? `/api/jobs/${job.jobId}/cancel` : `/api/jobs/${job.jobId}/signal`;
    try {
      upsert((await api(path, { method: "POST", body: action === "cancel" ? undefined : { signal: action }, auth: true })).job);
    } catch (err) { reportError(err); }
  }

  function row(job) {
    const button = (action, label) => h("button", { class: `btn small ${action === "complete" ? "" : "danger-ghost"}`, type: "button", "data-action": action, disabled: !ENABLED[action](job.status),
      onclick: (e) => { e.stopPropagation(); act(job, action); } }, label);
    return h("tr", { "data-testid": "job-row", "data-job-id": job.jobId, class: job.jobId === selected ? "selected" : "", onclick: () => choose(job.jobId) },
      h("td", { class: "mono" }, job.jobId), h("td", {}, job.type),
      h("td", {}, h("span", { class: `job-status badge badge-status status-${job.status}` }, job.status)),
      h("td", {}, job.experimentId ? h("a", { href: `#/exp/${encodeURIComponent(job.experimentId)}`, onclick: (e) => e.stopPropagation() }, shortId(job.experimentId)) : "–"),
      h("td", {}, fmtTime(job.createdAt)),
      h("td", { class: "error-cell", title: job.error || "" }, job.exitCode ?? "", job.error ? ` ${job.error}` : ""),
      h("td", { class: "actions" }, button("complete", "Complete"), button("stop", "Stop"), button("cancel", "Cancel")));
  }

  function renderRows() {
    const list = [...jobs.values()].sort((a, b) => b.createdAt - a.createdAt);
    mount(tbody, list.length ? list.map(row) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet.")));
  }

  function upsert(job) {
    jobs.set(job.jobId, job);
    const old = tbody.querySelector(`tr[data-job-id="${CSS.escape(job.jobId)}"]`);
    if (old) old.replaceWith(row(job)); else renderRows();
  }

  function appendLines(all) {
    const lines = all.filter((l) => l.timestamp > lastTs); // a line both in the backlog and in an event shows once
    if (!lines.length) return;
    lastTs = lines[lines.length - 1].timestamp;
    const atBottom = follow;
    // Python logging writes to stderr, so colour by level rather than by stream
    tail.append(...lines.map((l) => h("div", { class: `log-line ${LEVEL.exec(l.line)?.[1]?.toLowerCase() || ""}`, "data-stream": l.stream }, l.line)));
    while (tail.childElementCount > MAX_LOG_LINES) tail.firstElementChild.remove();
    if (atBottom) tail.scrollTop = tail.scrollHeight;
  }

  async function choose(jobId) {
    const mine = ++chooseSeq; // a later click (even on the same job) supersedes this load
    selected = jobId;
    lastTs = -Infinity;
    for (const tr of tbody.children) tr.classList.toggle("selected", tr.dataset.jobId === jobId);
    logTitle.textContent = jobId;
    mount(tail);
    follow = true;
    buffer = []; // log-lines arriving while the backlog loads
    try {
      const base = `/api/jobs/${encodeURIComponent(jobId)}/logs`;
      let page = await api(`${base}?offset=0&limit=1000`);
      if (page.totalLines > 1000) page = await api(`${base}?offset=${page.totalLines - 1000}&limit=1000`);
      if (mine !== chooseSeq) return;
      appendLines(page.lines);
      appendLines(buffer);
    } catch (err) {
      reportError(err);
    } finally {
      if (mine === chooseSeq) buffer = null;
    }
  }

  async function loadJobs() {
    try {
      const { jobs: list } = await api("/api/jobs");
      jobs.clear();
      for (const j of list) jobs.set(j.jobId, j);
      renderRows();
      if (selected && jobs.has(selected) && !tail.childElementCount) choose(selected);
    } catch (err) { reportError(err); }
  }

  const offs = [
    on("job-update", upsert),
    on("log-lines", ({ jobId, lines }) => {
      if (jobId !== selected) return;
      if (buffer) buffer.push(...lines); else appendLines(lines);
    }),
    on("jobs-reconnect", loadJobs),
  ];
  loadJobs();
  return { dispose() { offs.forEach((off) => off()); } };
}
