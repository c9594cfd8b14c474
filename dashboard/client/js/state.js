// Application state shared by views (experiment list, manifest, compare selection, chart preferences) and a tiny
// event bus, so the sidebar, the views and the SSE handlers stay decoupled.
import { api } from "./api.js";
import { shortId } from "./dom.js";

export const state = {
  experiments: [],
  manifest: null, // GET /api/plugins/tidal: trainingPhases, generation modes/parameters
  compare: new Set(), // experiment ids overlaid on the charts
  smoothing: 0.6,
  logScale: false,
  chartLog: {}, // per-chart log-scale choices (a chart key -> bool), over each chart's default
  xAxis: "step", // "step" | "wall" (wall-clock time) | "relative" (seconds since the run's first record)
};

const listeners = new Map();

/** Subscribe; returns the unsubscribe function (views call it on dispose). */
export function on(event, fn) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event).delete(fn);
}

export function emit(event, data) {
  for (const fn of listeners.get(event) || []) fn(data);
}

/** Newest first: by creation time, then by id (ids start with a timestamp). */
const newestFirst = (a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0) || String(b.id).localeCompare(String(a.id));

export async function refreshExperiments() {
  const { experiments } = await api("/api/experiments");
  state.experiments = experiments.sort(newestFirst);
  for (const id of state.compare) if (!experiments.some((e) => e.id === id)) state.compare.delete(id);
  emit("experiments", state.experiments);
}

export const experiment = (id) => state.experiments.find((e) => e.id === id);

/** Manifest globs ("*_v*.pth") as regular expressions. */
const globRe = (glob) => new RegExp(`^${glob.split("*").map((part) => part.replace(/[.+?^$(){}|[\]\\]/g, "\\$&")).join(".*")}$`);

/** A checkpoint's phase by the manifest's checkpointPatterns (first match wins), as the server classifies it. */
export function checkpointPhase(filename) {
  for (const p of state.manifest?.checkpointPatterns || []) {
    if (p.excludePrefix && filename.startsWith(p.excludePrefix)) continue;
    if (globRe(p.glob).test(filename)) return p.phase;
  }
  return "unknown";
}

const LM_PHASES = new Set(["final", "foundational"]);

/** Select options {value: "experiments/<id>/<file>", label, phase} for LM (final/foundational) or RL checkpoints,
 * newest experiment first; `filter` narrows the experiments. */
export function checkpointOptions(kind, filter = () => true) {
  return state.experiments.filter((e) => e.type === kind && filter(e)).flatMap((e) => e.checkpoints
    .map((f) => ({ value: `experiments/${e.id}/${f}`, label: `${shortId(e.id)} / ${f}`, phase: checkpointPhase(f) }))
    .filter((o) => (kind === "lm" ? LM_PHASES.has(o.phase) : o.phase === "rl")));
}
