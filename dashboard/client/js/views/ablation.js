// Ablation tab (RL runs with ablation_results.json from the held-out decoding study): the verdict, a quality–
// diversity frontier plot and a table of every evaluated decoder. Plain SVG: a few dozen points with CI bars on both
// axes and a reference line are simpler to draw than to configure in a chart library.
// The y axis is judge NLL drawn inverted (lower NLL higher up), so "up and to the right" is better on both axes.
import { api, expUrl } from "../api.js";
import { colour } from "../charts.js";
import { fmtNum, h } from "../dom.js";
import { reportError } from "../toast.js";

const NS = "http://www.w3.org/2000/svg";

// Every column of the table, with what its abbreviation means (shown as the table's legend).
const COLUMNS = [
  ["judge_nll", "Judge NLL", "negative log-likelihood of the text under the held-out judge LM (nats/token; lower is better)"],
  ["diversity", "Diversity", "the study's primary diversity measure (see above; higher is more diverse)"],
  ["prec_4", "prec-4", "4-gram precision against a disjoint reference sample (higher: more human-like phrasing)"],
  ["distinct_1", "dist-1", "distinct unigrams / all unigrams over the K samples of a prompt"],
  ["distinct_2", "dist-2", "distinct bigrams / all bigrams over the K samples of a prompt"],
  ["distinct_3", "dist-3", "distinct trigrams / all trigrams over the K samples of a prompt"],
  ["self_bleu", "self-BLEU", "BLEU of each sample against the other samples of its prompt (lower: more diverse)"],
  ["rep_4", "rep-4", "fraction of repeated 4-grams within a sample (lower: less repetition)"],
  ["length", "len", "mean generated length (tokens)"],
  ["eot_rate", "EOT", "fraction of samples that ended with end-of-text rather than the length limit"],
  ["train_reward", "train R", "mean training reward per token (the RL objective; not a held-out measure)"],
];

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** About n round tick values covering [lo, hi]. */
function niceTicks(lo, hi, n = 5) {
  const raw = (hi - lo) / n || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);
const isStudy = (r) => r && typeof r === "object" && r.families && typeof r.families === "object" && r.verdict && typeof r.verdict === "object";

function frontierPlot(results) {
  const width = 980, height = 440, left = 64, right = 330, top = 16, bottom = 46;  // room for the legend's full labels
  const plotW = width - left - right, plotH = height - top - bottom;
  const families = Object.entries(results.frontier || {}).filter(([, pts]) => Array.isArray(pts) && pts.length);
  const learned = (results.learned || []).filter((p) => finite(p?.judge_nll) && finite(p?.diversity));
  const oracle = finite(results.oracle?.judge_nll) && finite(results.oracle?.diversity) ? results.oracle : null;
  const human = finite(results.human?.judge_nll) ? results.human : null;
  const xs = [...families.flatMap(([, pts]) => pts.map((p) => p[0])), ...learned.flatMap((p) => p.diversity_ci || [p.diversity]), oracle?.diversity].filter(finite);
  const ys = [...families.flatMap(([, pts]) => pts.map((p) => p[1])), ...learned.flatMap((p) => p.judge_nll_ci || [p.judge_nll]), oracle?.judge_nll, human?.judge_nll].filter(finite);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "frontier", role: "img", "data-testid": "frontier-plot",
    "aria-label": "Judge NLL against diversity for each decoder family, the learned controller, the oracle and human text" });
  if (!xs.length || !ys.length) return root;
  const pad = (lo, hi) => { const p = (hi - lo) * 0.08 || 0.05; return [lo - p, hi + p]; };
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs)), [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const x = (v) => left + ((v - x0) / (x1 - x0)) * plotW;
  const y = (v) => top + ((v - y0) / (y1 - y0)) * plotH; // inverted: low NLL (better) at the top
  for (const v of niceTicks(x0, x1)) root.append(svg("line", { x1: x(v), x2: x(v), y1: top, y2: top + plotH, class: "grid" }), svg("text", { x: x(v), y: top + plotH + 16, class: "tick", "text-anchor": "middle" }, fmtNum(v, 3)));
  for (const v of niceTicks(y0, y1)) root.append(svg("line", { x1: left, x2: left + plotW, y1: y(v), y2: y(v), class: "grid" }), svg("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, fmtNum(v, 3)));
  const proto = results.protocol || {};
  root.append(
    svg("text", { x: left + plotW / 2, y: height - 6, class: "axis-label", "text-anchor": "middle" }, `${proto.diversity_label || "diversity"} →`),
    svg("text", { x: 14, y: top + plotH / 2, class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 14 ${top + plotH / 2})` }, `${proto.quality_label || "judge NLL (lower is better)"} ↑ better`));
  const legend = [];
  families.forEach(([name, pts], i) => {
    const c = colour(i);
    root.append(svg("polyline", { points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: "family-line", stroke: c, "data-family": name }));
    for (const p of pts) root.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: c }, svg("title", {}, `${name}: diversity ${fmtNum(p[0])}, judge NLL ${fmtNum(p[1])}`)));
    legend.push([results.families?.[name]?.label || name, c, "line"]);
  });
  if (human) {
    root.append(svg("line", { x1: left, x2: left + plotW, y1: y(human.judge_nll), y2: y(human.judge_nll), class: "human-line", "data-testid": "human-line" }),
      svg("text", { x: left + plotW - 4, y: y(human.judge_nll) - 5, class: "ref-label", "text-anchor": "end" }, `human ${fmtNum(human.judge_nll, 3)}`));
    legend.push(["human continuation (judge NLL)", "", "human"]);
  }
  for (const p of learned) {
    const [dl, dh] = p.diversity_ci || [p.diversity, p.diversity], [nl, nh] = p.judge_nll_ci || [p.judge_nll, p.judge_nll];
    const mean = /mean/i.test(p.name);
    root.append(svg("g", { class: "learned", "data-testid": "learned-point" },
      svg("line", { x1: x(dl), x2: x(dh), y1: y(p.judge_nll), y2: y(p.judge_nll), class: "ci" }),
      svg("line", { x1: x(p.diversity), x2: x(p.diversity), y1: y(nl), y2: y(nh), class: "ci" }),
      svg("circle", { cx: x(p.diversity), cy: y(p.judge_nll), r: mean ? 6 : 4.5, class: mean ? "learned-mean" : "learned-seed" }),
      svg("title", {}, `${p.name}: judge NLL ${fmtNum(p.judge_nll)} [${fmtNum(nl)}, ${fmtNum(nh)}], diversity ${fmtNum(p.diversity)} [${fmtNum(dl)}, ${fmtNum(dh)}]`)));
  }
  if (learned.length) legend.push(["learned controller (CI bars)", "", "learned"]);
  if (oracle) {
    const cx = x(oracle.diversity), cy = y(oracle.judge_nll);
    root.append(svg("path", { d: `M${cx} ${cy - 7} L${cx + 7} ${cy} L${cx} ${cy + 7} L${cx - 7} ${cy} Z`, class: "oracle", "data-testid": "oracle-point" },
      svg("title", {}, `oracle: judge NLL ${fmtNum(oracle.judge_nll)}, diversity ${fmtNum(oracle.diversity)}`)));
    legend.push(["per-token oracle (upper bound)", "", "oracle"]);
  }
  legend.forEach(([label, c, kind], i) => {
    const ly = top + 8 + i * 18, lx = left + plotW + 14;
    const mark = kind === "line" ? svg("line", { x1: lx, x2: lx + 16, y1: ly, y2: ly, stroke: c, class: "family-line" })
      : kind === "human" ? svg("line", { x1: lx, x2: lx + 16, y1: ly, y2: ly, class: "human-line" })
        : kind === "oracle" ? svg("path", { d: `M${lx + 8} ${ly - 5} L${lx + 13} ${ly} L${lx + 8} ${ly + 5} L${lx + 3} ${ly} Z`, class: "oracle" })
          : svg("circle", { cx: lx + 8, cy: ly, r: 4.5, class: "learned-seed" });
    root.append(svg("g", { class: "legend-item" }, mark, svg("text", { x: lx + 22, y: ly + 4, class: "legend-text" }, label)));
  });
  return root;
}

const withCi = (v, ci) => h("span", {}, fmtNum(v, 4), Array.isArray(ci) ? h("small", { class: "muted" }, ` [${fmtNum(ci[0], 3)}, ${fmtNum(ci[1], 3)}]`) : "");
const params = (p) => Object.entries(p || {}).map(([k, v]) => `${k}=${v}`).join(", ");

function pointsTable(results) {
  const rows = [
    ...Object.values(results.families || {}).flatMap((f) => f?.test || []),
    ...(results.learned || []), results.oracle, results.human,
  ].filter((p) => p && typeof p === "object");
  return h("div", { class: "table-wrap" }, h("table", { class: "table", "data-testid": "ablation-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Decoder"), h("th", {}, "Family"), COLUMNS.map(([key, abbr, meaning]) => h("th", { class: "num", title: meaning }, abbr)))),
    h("tbody", {}, rows.map((p) => h("tr", { "data-family": p.family || "" },
      h("td", {}, h("div", { class: "strong" }, p.name), h("small", { class: "muted" }, params(p.params))),
      h("td", {}, p.family || ""),
      h("td", { class: "num" }, withCi(p.judge_nll, p.judge_nll_ci)),
      h("td", { class: "num" }, p.diversity === null || p.diversity === undefined ? h("span", { class: "muted", title: "one sample per prompt: no set diversity" }, "n/a") : withCi(p.diversity, p.diversity_ci)),
      COLUMNS.slice(2).map(([key]) => h("td", { class: "num" }, fmtNum(p.metrics?.[key], 3))))))));
}

function studyView(results) {
  const v = results.verdict, proto = results.protocol || {};
  const seeds = (proto.rl_seeds || []).length, samples = proto.samples_per_prompt;
  return [
    h("section", { class: "card" },
      h("h3", {}, "Does the learned controller beat tuned fixed decoders?"),
      h("p", { class: "verdict", "data-testid": "ablation-verdict" }, h("b", {}, v.verdict), v.text ? ` — ${v.text}` : ""),
      h("p", { class: "muted" }, [
        v.gap !== null && v.gap !== undefined ? `Gap to the ${v.best_family ?? "best"} frontier at diversity ${fmtNum(v.at_diversity, 3)}: ${fmtNum(v.gap, 3)} nats/token` + (v.ci ? ` [${fmtNum(v.ci[0], 3)}, ${fmtNum(v.ci[1], 3)}]` : "") + ". " : "",
        v.oracle_gap !== null && v.oracle_gap !== undefined ? `Oracle's margin over the frontier: ${fmtNum(v.oracle_gap, 3)}` + (v.oracle_ci ? ` [${fmtNum(v.oracle_ci[0], 3)}, ${fmtNum(v.oracle_ci[1], 3)}]` : "") + ". " : "",
        `${proto.protocol ?? "?"} protocol: ${proto.test_prompts ?? "?"} test prompts, ${samples ?? "?"} samples per prompt, ${seeds || "?"} RL seed${seeds === 1 ? "" : "s"}, ${Math.round((proto.ci_level ?? 0.95) * 100)} % paired bootstrap CIs clustered by prompt.`,
      ].join("")),
      frontierPlot(results),
      h("p", { class: "muted small" }, "Each family's line is its test-set frontier (decoders tuned on dev), sorted by diversity. Up is lower judge NLL (better); right is more diverse. The human line has no diversity: the true continuation is one sample per prompt.")),
    h("section", { class: "card" }, h("h3", {}, "Every decoder on the test prompts"), pointsTable(results),
      h("dl", { class: "legend", "data-testid": "ablation-legend" }, COLUMNS.flatMap(([key, abbr, meaning]) => [h("dt", {}, abbr), h("dd", {}, key === "diversity" && proto.diversity_label ? `${proto.diversity_label} (higher is more diverse)` : key === "judge_nll" && proto.quality_label ? proto.quality_label : meaning)]))),
  ];
}

export function renderAblation(root, exp) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading ablation results…"));
  root.append(body);
  api(expUrl(exp.id, "ablation")).then(({ results }) => {
    if (!results) return body.replaceChildren(h("p", { class: "muted" }, "This run has no ablation results."));
    if (!isStudy(results)) {
      return body.replaceChildren(h("div", { class: "notice", "data-testid": "old-format-note" },
        h("b", {}, "Old-format results; rerun the study. "),
        "This file holds mean training rewards per policy (the earlier ablation), which the dashboard no longer plots: they score the generator's own likelihood and cannot show a held-out win. Run ",
        h("code", {}, "train_rl.py --resume <rl checkpoint> --ablation"), " to evaluate the quality–diversity frontier."));
    }
    body.replaceChildren(...studyView(results));
  }).catch((err) => { body.replaceChildren(h("p", { class: "muted" }, "Could not load the ablation results.")); reportError(err); });
  return {};
}
