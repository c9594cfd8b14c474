// Charts tab of an experiment: metric cards and live charts (LM or RL), smoothing, log scale, compare overlays, an
// x axis by step, wall-clock or relative time, and the run's system samples (CPU, memory, GPU; `source: "system"`).
// History comes from /metrics sized to the chart's pixel width (server min/max bucketing); live SSE records are
// appended in place; a resize or a much longer series triggers one re-request at the new resolution.
import { fetchMetrics } from "../api.js";
import { Chart, chartsAvailable, colour } from "../charts.js";
import { debounce, fmtDuration, fmtNum, h, shortId } from "../dom.js";
import { SeriesStore, smooth } from "../series.js";
import { experiment, on, state } from "../state.js";
import { reportError } from "../toast.js";

const pct = (v) => (v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
const SYSTEM_POLL_MS = 30000; // system samples are written every ~15 s and are not in the live stream

// The run's process and GPU samples (MetricsLogger's system.jsonl); hidden until a run has them.
const SYSTEM_CHARTS = [
  { key: "System/CPU %", title: "Process CPU (% of one core) and memory", extra: [{ key: "System/RSS MB", scale: "y2" }], y2Label: "RSS (MB)", source: "system", optional: true },
  { key: "System/GPU memory MB", title: "GPU memory (MB, allocated) and utilisation", extra: [{ key: "System/GPU util %", scale: "y2" }], y2Label: "utilisation %", source: "system", optional: true },
];
const X_AXES = { step: null, wall: "wall-clock time", relative: "time since start (s)" };

// What each run type shows. A chart's `key` is its primary series; `extra` adds series ({key, scale}).
const SPECS = {
  lm: {
    series: "lm", xKey: "step", live: "metrics",
    cards: [
      { key: "Losses/Total", label: "Loss" }, { key: "Losses/Validation", label: "Val loss" },
      { key: "Perplexity", label: "Perplexity" }, { key: "Learning Rate", label: "Learning rate" },
      { key: "Tokens/Second", label: "Tokens/s" }, { key: "Progress", label: "Progress", fmt: pct },
      { key: "ETA/Seconds", label: "ETA", fmt: fmtDuration },
    ],
    charts: [
      { key: "Losses/Total", title: "Training loss (nats/token)", smooth: true },
      { key: "Losses/Validation", title: "Validation loss (nats/token)" },
      { key: "Learning Rate", title: "Learning rate" },
      { key: "Perplexity", title: "Perplexity (log scale by default)", log: true, extra: [{ key: "Perplexity/Validation" }] },
      { key: "Tokens/Second", title: "Throughput (tokens/s)" },
      ...SYSTEM_CHARTS,
    ],
  },
  rl: {
    series: "rl", xKey: "global_step", live: "rl-metrics",
    cards: [
      { key: "episode_rewards", label: "Episode reward" }, { key: "gate_modulation", label: "Mean action" },
      { key: "entropy", label: "Entropy" }, { key: "explained_variance", label: "Explained variance" },
      { key: "steps_per_second", label: "Steps/s" }, { key: "progress", label: "Progress", fmt: pct },
    ],
    get charts() { return [ // a getter: the reward components come from the manifest, loaded after this module
      { key: "episode_rewards", title: "Episode reward (sum over an episode's tokens)", smooth: true },
      { key: "policy_loss", title: "Policy and value loss", extra: [{ key: "value_loss", scale: "y2" }], y2Label: "value loss" },
      { key: "entropy", title: "Entropy and its coefficient", extra: [{ key: "entropy_coef", scale: "y2" }], y2Label: "coefficient" },
      { key: "gate_modulation", title: "Mean action (m, or the residual action's index)" },
      ...rewardCharts(),
      { key: "explained_variance", title: "Explained variance" },
      { key: "lagrange_multiplier", title: "Lagrange multiplier λ", optional: true, extra: [{ key: "mean_cost", scale: "y2" }], y2Label: "mean cost" },
      ...SYSTEM_CHARTS,
    ]; },
  },
};

// One chart of the RL reward components the plugin declares (manifest metrics.rl.rewardComponents; the trainer
// logs each as reward_<name>).
function rewardCharts() {
  const names = state.manifest?.metrics?.rl?.rewardComponents || [];
  if (!names.length) return [];
  const [first, ...rest] = names.map((name) => `reward_${name}`);
  return [{ key: first, title: `Reward components (mean per token): ${names.join(", ")}`, extra: rest.map((key) => ({ key })) }];
}

export function renderMetrics(root, exp, streamReady = Promise.resolve()) {
  const spec = SPECS[exp.type] || SPECS.lm;
  if (!chartsAvailable()) {
    root.append(h("div", { class: "notice" }, "Charts are unavailable: uPlot could not be loaded from /vendor/uplot/. Run ", h("code", {}, "make setup"), " and reload."));
    return {};
  }
  const keys = [...new Set([...spec.cards.map((c) => c.key), ...spec.charts.filter((c) => !c.source).flatMap((c) => [c.key, ...(c.extra || []).map((e) => e.key)])])];
  let store = new SeriesStore(spec.xKey), others = new Map(), pending = null, fetchedWidth = 0, frame = 0, seq = 0;
  let system = new SeriesStore("step"), systemTimer = 0;
  const controller = new AbortController();

  // ---- controls, cards, charts
  const smoothValue = h("output", {}, state.smoothing.toFixed(2));
  const compareNote = h("span", { class: "muted compare-note" });
  root.append(h("div", { class: "toolbar" },
    h("label", { class: "control" }, "Smoothing",
      h("input", { id: "smoothing", type: "range", min: 0, max: 0.99, step: 0.01, value: state.smoothing,
        oninput: (e) => { state.smoothing = Number(e.target.value); smoothValue.value = state.smoothing.toFixed(2); schedule(); } }), smoothValue),
    h("label", { class: "control" }, h("input", { id: "log-scale", type: "checkbox", checked: state.logScale, onchange: (e) => { state.logScale = e.target.checked; state.chartLog = {}; schedule(); } }), "Log scale (y)"),
    h("label", { class: "control" }, "X axis",
      h("select", { id: "x-axis", onchange: (e) => { state.xAxis = e.target.value; schedule(); } },
        [["step", spec.xKey === "step" ? "step" : "global step"], ["wall", "wall-clock time"], ["relative", "relative time"]]
          .map(([value, label]) => h("option", { value, selected: state.xAxis === value }, label)))),
    compareNote));
  const cards = spec.cards.map((c) => ({ ...c, value: h("div", { class: "value" }, "–"), sub: h("div", { class: "sub muted" }) }));
  root.append(h("div", { class: "cards" }, cards.map((c) => h("div", { class: "card metric", "data-testid": "metric-card", "data-key": c.key }, h("div", { class: "label" }, c.label), c.value, c.sub))));
  const logOf = (c) => state.chartLog[c.key] ?? (c.log || state.logScale);
  const charts = spec.charts.map((c) => ({ spec: c, chart: new Chart({ key: c.key, title: c.title, xLabel: spec.xKey, y2Label: c.y2Label,
    actions: [h("button", { class: "btn ghost small", type: "button", "data-action": "log", title: "Toggle this chart's log scale", onclick: () => { state.chartLog[c.key] = !logOf(c); schedule(); } }, "log")] }) }));
  const grid = h("div", { class: "chart-grid" }, charts.map((c) => c.chart.el));
  root.append(grid);

  // ---- data
  const compared = () => [...state.compare].filter((id) => id !== exp.id && experiment(id)?.type === exp.type);

  async function load() {
    const width = charts[0].chart.width();
    const mine = ++seq; // a newer request (compare toggled, resize) supersedes this one
    fetchedWidth = width;
    pending = pending || [];
    try {
      await streamReady;
      const ids = [exp.id, ...compared()];
      const [results, sys] = await Promise.all([Promise.all(ids.map((id) => fetchMetrics(id, spec.series, width, keys, controller.signal))),
        fetchMetrics(exp.id, "system", width, null, controller.signal).catch(() => null)]);
      if (mine !== seq) return;
      if (sys) system = SeriesStore.fromPoints(sys.points, "step");
      const stores = results.map((r) => SeriesStore.fromPoints(r.points.sort((a, b) => a[spec.xKey] - b[spec.xKey]), spec.xKey));
      store = stores[0];
      for (const rec of pending) store.add(rec); // records that arrived while the history was in flight
      others = new Map(ids.slice(1).map((id, i) => [id, stores[i + 1]]));
    } catch (err) {
      if (err.name !== "AbortError") reportError(err);
    }
    if (mine !== seq) return;
    pending = null;
    schedule();
  }

  function schedule() {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(draw); // coalesce bursts of live records into one paint
  }

  function draw() {
    for (const c of cards) {
      const v = store.last(c.key);
      c.value.textContent = c.fmt ? c.fmt(v) : fmtNum(v);
      c.sub.textContent = store.longest() ? `${spec.xKey} ${fmtNum(store.get(c.key).x.at(-1) ?? store.lastX())}` : "";
    }
    const runs = compared().filter((id) => others.has(id));
    compareNote.textContent = runs.length ? `Comparing with ${runs.map(shortId).join(", ")}` : "";
    const tag = (label, id) => (runs.length ? `${label} · ${shortId(id)}` : label);
    // the x axis: steps as logged, or each point's timestamp (relative: from each run's own first record)
    const along = (s, st) => {
      if (state.xAxis === "step") return s;
      const t0 = state.xAxis === "relative" ? st.firstTime() ?? 0 : 0;
      const keep = s.t.map((t) => t !== null && t !== undefined);
      return { x: s.t.filter((_, i) => keep[i]).map((t) => t - t0), y: s.y.filter((_, i) => keep[i]) };
    };
    for (const { spec: c, chart } of charts) {
      const src = c.source === "system" ? system : store;
      if (c.optional) chart.el.hidden = !src.has(c.key);
      if (chart.el.hidden) continue;
      const series = [];
      const main = along(src.get(c.key), src);
      if (c.smooth && state.smoothing > 0) {
        series.push({ label: tag(`${c.key} (raw)`, exp.id), ...main, color: colour(0), faint: true, primary: true });
        series.push({ label: tag(`${c.key} (smoothed)`, exp.id), x: main.x, y: smooth(main.y, state.smoothing), color: colour(0) });
      } else series.push({ label: tag(c.key, exp.id), ...main, color: colour(0), primary: true });
      (c.extra || []).forEach((e, i) => { if (src.has(e.key)) series.push({ label: tag(e.key, exp.id), ...along(src.get(e.key), src), color: colour(i + 1), scale: e.scale }); });
      if (!c.source) runs.forEach((id, i) => {
        const s = along(others.get(id).get(c.key), others.get(id));
        if (s.x.length) series.push({ label: tag(c.key, id), x: s.x, y: c.smooth ? smooth(s.y, state.smoothing) : s.y, color: colour(i + 1 + (c.extra?.length || 0)), dash: [6, 3] });
      });
      chart.render({ series, log: logOf(c), xLabel: X_AXES[state.xAxis] || spec.xKey, xTime: state.xAxis === "wall" });
    }
  }

  // ---- live updates and re-requests
  const refetchIfMuchWider = debounce(() => {
    const w = charts[0].chart.width();
    if (Math.abs(w - fetchedWidth) / fetchedWidth > 0.1) load();
  }, 400);
  const resizer = new ResizeObserver(refetchIfMuchWider);
  resizer.observe(grid);
  const offs = [on("compare", load), on("theme", () => { for (const c of charts) c.chart.signature = ""; schedule(); })];
  load();
  const pollSystem = async () => {
    if (!experiment(exp.id)?.live) return; // a finished run's samples do not change
    try {
      const sys = await fetchMetrics(exp.id, "system", fetchedWidth || 600, null, controller.signal);
      system = SeriesStore.fromPoints(sys.points, "step");
      schedule();
    } catch (err) { if (err.name !== "AbortError") reportError(err); }
  };
  systemTimer = setInterval(pollSystem, SYSTEM_POLL_MS);

  return {
    onEvent(kind, record) {
      if (kind !== spec.live) return;
      if (pending) pending.push(record);
      else if (store.add(record)) {
        schedule();
        // live points accumulate beyond the server's bucketing: re-bucket once they outnumber the pixels 4:1
        if (store.longest() > 4 * fetchedWidth) load();
      }
    },
    onReconnect: load,
    dispose() {
      controller.abort();
      clearInterval(systemTimer);
      cancelAnimationFrame(frame);
      resizer.disconnect();
      offs.forEach((off) => off());
      charts.forEach((c) => c.chart.destroy());
    },
  };
}
