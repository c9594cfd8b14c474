// Ablation tab (RL runs with ablation_results.json): policies sorted by mean reward with bootstrap CIs, as a
// table and as a horizontal bar chart with CI whiskers (plain SVG: a handful of bars needs no chart library).
import { api, expUrl } from "../api.js";
import { fmtNum, h } from "../dom.js";
import { reportError } from "../toast.js";

const COMPONENTS = ["perplexity", "diversity", "sampling", "repetition", "coherence"];
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** About n round tick values covering [lo, hi]. */
function niceTicks(lo, hi, n = 4) {
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function barChart(rows) {
  const rowH = 30, left = 180, right = 90, width = 760, top = 10, plotW = width - left - right;
  const height = top + rows.length * rowH + 30;
  const lo = Math.min(0, ...rows.map((r) => r.reward.ci_low ?? r.reward.mean));
  const hi = Math.max(0, ...rows.map((r) => r.reward.ci_high ?? r.reward.mean));
  const pad = (hi - lo) * 0.05 || 1, d0 = lo < 0 ? lo - pad : 0, d1 = hi + pad;
  const x = (v) => left + ((v - d0) / (d1 - d0)) * plotW;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "bars", role: "img", "aria-label": "Mean reward per policy with confidence intervals" });
  for (const v of niceTicks(d0, d1)) { // grid lines and tick labels
    const gx = x(v);
    root.append(svg("line", { x1: gx, x2: gx, y1: top, y2: height - 24, class: "grid" }),
      svg("text", { x: gx, y: height - 8, class: "tick", "text-anchor": "middle" }, fmtNum(v, 2)));
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH, mid = y + rowH / 2, { mean, ci_low: cl = mean, ci_high: ch = mean } = r.reward;
    root.append(
      svg("text", { x: left - 10, y: mid + 4, class: "label", "text-anchor": "end" }, r.name),
      svg("rect", { x: Math.min(x(0), x(mean)), y: y + 6, width: Math.max(1, Math.abs(x(mean) - x(0))), height: rowH - 12, rx: 3, class: i === 0 ? "bar best" : "bar" }),
      svg("line", { x1: x(cl), x2: x(ch), y1: mid, y2: mid, class: "whisker" }),
      svg("line", { x1: x(cl), x2: x(cl), y1: mid - 6, y2: mid + 6, class: "whisker" }),
      svg("line", { x1: x(ch), x2: x(ch), y1: mid - 6, y2: mid + 6, class: "whisker" }),
      svg("text", { x: x(ch) + 8, y: mid + 4, class: "value" }, fmtNum(mean, 3)),
      svg("title", {}, `${r.name}: ${fmtNum(mean)} [${fmtNum(cl)}, ${fmtNum(ch)}]`));
  });
  root.append(svg("line", { x1: x(0), x2: x(0), y1: top, y2: height - 24, class: "zero" }));
  return root;
}

const ci = (s) => (s ? h("span", {}, fmtNum(s.mean, 3), h("small", { class: "muted" }, ` [${fmtNum(s.ci_low, 3)}, ${fmtNum(s.ci_high, 3)}]`)) : "–");

export function renderAblation(root, exp) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading ablation results…"));
  root.append(body);
  api(expUrl(exp.id, "ablation")).then(({ results }) => {
    const rows = Object.entries(results?.policies || {}).map(([name, p]) => ({ name, ...p }))
      .filter((r) => r.reward).sort((a, b) => b.reward.mean - a.reward.mean);
    if (!rows.length) return body.replaceChildren(h("p", { class: "muted" }, "This run has no ablation results."));
    const verdict = results.learned_vs_best_constant;
    body.replaceChildren(
      h("section", { class: "card" }, h("h3", {}, "Mean episode reward by policy"),
        h("p", { class: "muted" }, `${Math.round((results.config?.ci_level ?? 0.95) * 100)} % bootstrap confidence intervals, ${results.config?.episodes_per_policy ?? "?"} episodes per policy.`),
        barChart(rows),
        verdict && h("p", { class: "verdict" }, h("b", {}, verdict.verdict), ` — ${verdict.policy} vs best constant m = ${verdict.best_constant_m}: difference ${fmtNum(verdict.difference, 3)} [${fmtNum(verdict.ci_low, 3)}, ${fmtNum(verdict.ci_high, 3)}]`)),
      h("section", { class: "card" }, h("div", { class: "table-wrap" }, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Policy"), h("th", {}, "Reward (mean, CI)"), COMPONENTS.map((c) => h("th", {}, c)), h("th", { class: "num" }, "Mean length"))),
        h("tbody", {}, rows.map((r) => h("tr", {},
          h("td", {}, h("div", { class: "strong" }, r.name), h("small", { class: "muted" }, r.description || "")),
          h("td", {}, ci(r.reward)),
          COMPONENTS.map((c) => h("td", { class: "num" }, fmtNum(r.components?.[c]?.mean, 3))),
          h("td", { class: "num" }, fmtNum(r.mean_length, 3)))))))));
  }).catch((err) => { body.replaceChildren(h("p", { class: "muted" }, "Could not load the ablation results.")); reportError(err); });
  return {};
}
