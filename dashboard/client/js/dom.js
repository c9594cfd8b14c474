// Small DOM and formatting helpers shared by every view (no framework: views build elements with h()).

/** h("div", {class: "x", onclick: fn, dataset: {id: 1}}, child, "text", [more]) → HTMLElement. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "selected") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace all children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** <select> with options [{value, label}] and a preselected value. */
export function select(attrs, options, selected) {
  return h("select", attrs, options.map((o) => h("option", { value: o.value, selected: o.value === selected }, o.label)));
}

/** Labelled form field. */
export const field = (label, control, hint) => h("label", { class: "field" }, h("span", {}, label), control, hint && h("small", { class: "muted" }, hint));

// ---- formatting
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number.isInteger(v) ? v.toLocaleString() : v.toPrecision(digits).replace(/\.?0+$/, "");
}

export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${ss}s` : `${ss}s`;
}

export const fmtTime = (epochSeconds) => (epochSeconds ? new Date(epochSeconds * 1000).toLocaleString() : "–");

/** "20261122-012645-commit_5d9e84e-config_f2…-rl_69…" → "012645-rl" : compact but unique enough for legends. */
export function shortId(id) {
  const m = /^\d{8}-(\d{6})/.exec(id || "");
  return m ? `${m[1]}${id.includes("-rl_") ? "-rl" : ""}` : String(id).slice(0, 14);
}

/** Download a Blob under a file name. */
export function download(blob, filename) {
  const a = h("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

/** Read a CSS custom property from :root (chart colours follow the stylesheet and dark mode). */
export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

export const debounce = (fn, ms) => {
  let t;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
};
