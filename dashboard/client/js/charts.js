// One chart component for every plot in the app (metrics, compare overlays, generation trajectories): a card with a
// title, CSV/PNG export and a uPlot instance. uPlot is loaded lazily so a missing `make setup` shows a message
// instead of a blank page; colours come from CSS variables so dark mode and the stylesheet stay the single source.
import { cssVar, download, fmtNum, h } from "./dom.js";

let uPlot = null;
let painted = false; // performance.mark("tidal:chart-painted") is set once, after the first chart with data draws

/** Import uPlot (ES module + its stylesheet) from the server's /vendor path; throws when it is not installed. */
export async function loadUPlot() {
  if (uPlot) return uPlot;
  uPlot = (await import("/vendor/uplot/uPlot.esm.js")).default;
  document.head.append(h("link", { rel: "stylesheet", href: "/vendor/uplot/uPlot.min.css" }));
  return uPlot;
}

export const chartsAvailable = () => uPlot !== null;

/** Palette colour i (cycled), read from --c1..--c8 so it follows prefers-color-scheme. */
export const colour = (i) => cssVar(`--c${(i % 8) + 1}`);

export function alpha(hex, a) {
  const m = /^#([0-9a-f]{6})$/i.exec(hex);
  if (!m) return hex;
  const n = parseInt(m[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

const safeName = (s) => s.replace(/[^a-z0-9._-]+/gi, "_");
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumSignificantDigits: 3 });
const tickValues = (u, ticks) => ticks.map((v) => (Math.abs(v) >= 1e4 ? compact.format(v) : fmtNum(v, 3)));

/**
 * A chart card. render({series, log}) where each series is
 * {label, x: number[], y: number[], color, faint?, dash?, scale?: "y"|"y2", primary?}.
 * The uPlot instance is rebuilt only when the set of series (or the scale type) changes; otherwise setData.
 */
export class Chart {
  constructor({ key, title, xLabel = "step", height = 220, sync = "tidal", testid = "chart", y2Label = "", actions = [] }) {
    Object.assign(this, { key, title, xLabel, height, sync, y2Label, u: null, signature: "", table: null, xTime: false });
    this.plot = h("div", { class: "chart-plot" });
    this.empty = h("div", { class: "chart-empty muted", hidden: true }, "No data yet");
    this.el = h("section", { class: "card chart", "data-testid": testid, "data-key": key },
      h("header", { class: "chart-head" }, h("h3", {}, title), h("div", { class: "chart-actions" }, actions,
        h("button", { class: "btn ghost small", type: "button", "data-action": "csv", title: "Download the plotted series as CSV", onclick: () => this.exportCsv() }, "CSV"),
        h("button", { class: "btn ghost small", type: "button", "data-action": "png", title: "Download the chart as PNG", onclick: () => this.exportPng() }, "PNG"))),
      this.plot, this.empty);
    // uPlot draws at a fixed pixel size: follow the card's width
    this.resizer = new ResizeObserver(() => this.u?.setSize({ width: this.width(), height: this.height }));
    this.resizer.observe(this.plot);
  }

  width() { return Math.max(200, Math.floor(this.plot.clientWidth || this.el.clientWidth || 600)); }

  /** xLabel/xTime (optional) switch the x axis, e.g. to wall-clock time (epoch seconds drawn as dates). */
  render({ series, log = false, xLabel = this.xLabel, xTime = false }) {
    this.xLabel = xLabel;
    this.xTime = xTime;
    this.el.dataset.log = String(log);
    this.el.dataset.xLabel = xLabel;
    const shown = series.filter((s) => s.x.length);
    const primary = series.find((s) => s.primary) || series[0];
    this.el.dataset.points = String(primary ? primary.x.length : 0);
    this.el.dataset.lastX = primary?.x.length ? String(primary.x[primary.x.length - 1]) : "";
    this.empty.hidden = shown.length > 0;
    this.table = { labels: shown.map((s) => s.label), data: shown.length ? uPlot.join(shown.map((s) => [s.x, s.y])) : [[]] };
    // a log axis cannot show values <= 0: hide them instead of breaking the scale
    const data = log ? this.table.data.map((col, i) => (i === 0 ? col : col.map((v) => (v > 0 ? v : null)))) : this.table.data;
    const signature = JSON.stringify([shown.map((s) => [s.label, s.color, s.scale, s.faint, s.dash]), log, xLabel, xTime]);
    if (signature !== this.signature || !this.u) {
      this.u?.destroy();
      this.signature = signature;
      this.u = shown.length ? new uPlot(this.options(shown, log), data, this.plot) : null;
    } else this.u.setData(data);
  }

  options(series, log) {
    const fg = cssVar("--fg-muted"), grid = cssVar("--grid");
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: "11px system-ui, sans-serif" };
    const hasY2 = series.some((s) => s.scale === "y2");
    const yScale = log ? { distr: 3, log: 10 } : {};
    return {
      width: this.width(), height: this.height,
      cursor: { sync: { key: this.sync, setSeries: false }, drag: { x: true, y: false } },
      legend: { live: true },
      scales: { x: { time: this.xTime }, y: yScale, ...(hasY2 ? { y2: yScale } : {}) },
      axes: [
        { ...axis, label: this.xLabel, labelSize: 18, labelFont: "11px system-ui, sans-serif" },
        { ...axis, size: 56, values: tickValues },
        ...(hasY2 ? [{ ...axis, scale: "y2", side: 1, size: 56, grid: { show: false }, label: this.y2Label, labelSize: this.y2Label ? 18 : 0, values: tickValues }] : []),
      ],
      series: [{ label: this.xLabel, value: (u, v) => (this.xTime && v !== null ? new Date(v * 1000).toLocaleString() : fmtNum(v)) }, ...series.map((s) => ({
        label: s.label, scale: s.scale || "y", spanGaps: true, dash: s.dash,
        stroke: s.faint ? alpha(s.color, 0.35) : s.color, width: s.faint ? 1 : 1.75,
        points: s.faint ? { show: false } : { size: 5, fill: s.color },
        value: (u, v) => fmtNum(v),
      }))],
      hooks: { draw: [() => { if (!painted) { painted = true; performance.mark("tidal:chart-painted"); } }] },
    };
  }

  exportCsv() {
    if (!this.table) return;
    const quote = (s) => `"${String(s).replaceAll('"', '""')}"`;
    const { labels, data } = this.table;
    const rows = [[this.xLabel, ...labels].map(quote).join(",")];
    for (let i = 0; i < data[0].length; i++) rows.push(data.map((col) => (col[i] ?? "")).join(","));
    download(new Blob([rows.join("\n") + "\n"], { type: "text/csv" }), `${safeName(this.key)}.csv`);
  }

  /** The plot canvas on the page background, with the title and a wrapped legend, so the PNG reads on its own. */
  exportPng() {
    if (!this.u) return;
    const src = this.u.ctx.canvas, dpr = window.devicePixelRatio || 1, pad = 10 * dpr, head = 28 * dpr, lineH = 18 * dpr;
    const out = h("canvas"), ctx = out.getContext("2d"), font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.font = font;
    const items = [];
    let x = pad, y = 0; // lay out legend entries first: the canvas height depends on how many lines they need
    this.u.series.slice(1).forEach((s, i) => {
      const w = ctx.measureText(s.label).width + 30 * dpr;
      if (x + w > src.width + pad && x > pad) { x = pad; y += lineH; }
      items.push({ x, y, label: s.label, color: typeof s.stroke === "function" ? s.stroke(this.u, i + 1) : s.stroke });
      x += w;
    });
    out.width = src.width + 2 * pad;
    out.height = head + src.height + y + lineH + pad;
    ctx.fillStyle = cssVar("--panel");
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = cssVar("--fg");
    ctx.font = `600 ${13 * dpr}px system-ui, sans-serif`;
    ctx.fillText(this.title, pad, 19 * dpr);
    ctx.drawImage(src, pad, head);
    ctx.font = font;
    const top = head + src.height + 8 * dpr;
    for (const it of items) {
      ctx.fillStyle = it.color || cssVar("--fg");
      ctx.fillRect(it.x, top + it.y, 12 * dpr, 3 * dpr);
      ctx.fillStyle = cssVar("--fg-muted");
      ctx.fillText(it.label, it.x + 16 * dpr, top + it.y + 5 * dpr);
    }
    out.toBlob((blob) => download(blob, `${safeName(this.key)}.png`), "image/png");
  }

  destroy() {
    this.resizer.disconnect();
    this.u?.destroy();
    this.u = null;
  }
}
