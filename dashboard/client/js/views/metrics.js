// Charts tab of an experiment: metric cards and live charts (LM or RL), smoothing, log scale, compare overlays.
// History comes from /metrics sized to the chart's pixel width (server min/max bucketing); live SSE records are
// appended in place; a resize or a much longer series triggers one re-request at the new resolution.
import { fetchMetrics } from "../api.js";
import { Chart, chartsAvailable, colour } from "../charts.js";
import { debounce, fmtDuration, fmtNum, h, shortId } from "../dom.js";
import { SeriesStore, smooth } from "../series.js";
import { experiment, on, state } from "../state.js";
import { reportError } from "../toast.js";

const pct = (v) => (v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);

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
      { key: "Losses/Total", title: "Training loss", smooth: true },
      { key: "Losses/Validation", title: "Validation loss" },
      { key: "Learning Rate", title: "Learning rate" },
      { key: "Perplexity", title: "Perplexity", extra: [{ key: "Perplexity/Validation" }] },
      { key: "Tokens/Second", title: "Throughput (tokens/s)" },
    ],
  },
  rl: {
    series: "rl", xKey: "global_step", live: "rl-metrics",
    cards: [
      { key: "episode_rewards", label: "Episode reward" }, { key: "gate_modulation", label: "Modulation m" },
      { key: "entropy", label: "Entropy" }, { key: "explained_variance", label: "Explained variance" },
      { key: "steps_per_second", label: "Steps/s" }, { key: "progress", label: "Progress", fmt: pct },
    ],
    charts: [
      { key: "episode_rewards", title: "Episode reward", smooth: true },
      { key: "policy_loss", title: "Policy and value loss", extra: [{ key: "value_loss", scale: "y2" }], y2Label: "value loss" },
      { key: "entropy", title: "Entropy and its coefficient", extra: [{ key: "entropy_coef", scale: "y2" }], y2Label: "coefficient" },
      { key: "gate_modulation", title: "Gate modulation m" },
      { key: "reward_perplexity", title: "Reward components", extra: ["reward_diversity", "reward_sampling", "reward_repetition", "reward_coherence"].map((key) => ({ key })) },
      { key: "explained_variance", title: "Explained variance" },
      { key: "lagrange_multiplier", title: "Lagrange multiplier λ", optional: true, extra: [{ key: "mean_cost", scale: "y2" }], y2Label: "mean cost" },
    ],
  },
};

export function renderMetrics(root, exp, streamReady = Promise.resolve()) {
  const spec = SPECS[exp.type] || SPECS.lm;
  if (!chartsAvailable()) {
    root.append(h("div", { class: "notice" }, "Charts are unavailable: uPlot could not be loaded from /vendor/uplot/. Run ", h("code", {}, "make setup"), " and reload."));
    return {};
  }
  const keys = [...new Set([...spec.cards.map((c) => c.key), ...spec.charts.flatMap((c) => [c.key, ...(c.extra || []).map((e) => e.key)])])];
  let store = new SeriesStore(spec.xKey), others = new Map(), pending = null, fetchedWidth = 0, frame = 0, seq = 0;
  const controller = new AbortController();

  // ---- controls, cards, charts
  const smoothValue = h("output", {}, state.smoothing.toFixed(2));
  const compareNote = h("span", { class: "muted compare-note" });
  root.append(h("div", { class: "toolbar" },
    h("label", { class: "control" }, "Smoothing",
      h("input", { id: "smoothing", type: "range", min: 0, max: 0.99, step: 0.01, value: state.smoothing,
        oninput: (e) => { state.smoothing = Number(e.target.value); smoothValue.value = state.smoothing.toFixed(2); schedule(); } }), smoothValue),
    h("label", { class: "control" }, h("input", { id: "log-scale", type: "checkbox", checked: state.logScale, onchange: (e) => { state.logScale = e.target.checked; schedule(); } }), "Log scale (y)"),
    compareNote));
  const cards = spec.cards.map((c) => ({ ...c, value: h("div", { class: "value" }, "–"), sub: h("div", { class: "sub muted" }) }));
  root.append(h("div", { class: "cards" }, cards.map((c) => h("div", { class: "card metric", "data-testid": "metric-card", "data-key": c.key }, h("div", { class: "label" }, c.label), c.value, c.sub))));
  const charts = spec.charts.map((c) => ({ spec: c, chart: new Chart({ key: c.key, title: c.title, xLabel: spec.xKey, y2Label: c.y2Label }) }));
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
      const results = await Promise.all(ids.map((id) => fetchMetrics(id, spec.series, width, keys, controller.signal)));
      if (mine !== seq) return;
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
    for (const { spec: c, chart } of charts) {
      if (c.optional) chart.el.hidden = !store.has(c.key);
      if (chart.el.hidden) continue;
      const series = [];
      const main = store.get(c.key);
      if (c.smooth && state.smoothing > 0) {
        series.push({ label: tag(`${c.key} (raw)`, exp.id), ...main, color: colour(0), faint: true, primary: true });
        series.push({ label: tag(`${c.key} (smoothed)`, exp.id), x: main.x, y: smooth(main.y, state.smoothing), color: colour(0) });
      } else series.push({ label: tag(c.key, exp.id), ...main, color: colour(0), primary: true });
      (c.extra || []).forEach((e, i) => { if (store.has(e.key)) series.push({ label: tag(e.key, exp.id), ...store.get(e.key), color: colour(i + 1), scale: e.scale }); });
      runs.forEach((id, i) => {
        const s = others.get(id).get(c.key);
        if (s.x.length) series.push({ label: tag(c.key, id), x: s.x, y: c.smooth ? smooth(s.y, state.smoothing) : s.y, color: colour(i + 1 + (c.extra?.length || 0)), dash: [6, 3] });
      });
      chart.render({ series, log: state.logScale });
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
      cancelAnimationFrame(frame);
      resizer.disconnect();
      offs.forEach((off) => off());
      charts.forEach((c) => c.chart.destroy());
    },
  };
}
