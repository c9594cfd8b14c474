// Metric series kept per key as parallel x/y arrays (plus t, each point's wall-clock timestamp, so a chart can
// switch its x axis to time), filled from a (downsampled) history and extended by live SSE records; plus
// TensorBoard's debiased EMA smoothing.

const SKIP = new Set(["timestamp", "step", "global_step"]);

export class SeriesStore {
  /** xKey: "step" for LM records, "global_step" for RL ones. */
  constructor(xKey) {
    this.xKey = xKey;
    this.map = new Map();
  }

  /** From /metrics points: a downsampled point carries only the keys it was selected for, so read per key. */
  static fromPoints(points, xKey) {
    const store = new SeriesStore(xKey);
    for (const p of points) store.add(p);
    return store;
  }

  /** Append one record; values at an x not past the key's last x are ignored (replays after a reconnect). */
  add(record) {
    const x = record[this.xKey];
    if (typeof x !== "number") return false;
    let added = false;
    for (const [k, v] of Object.entries(record)) {
      if (SKIP.has(k) || typeof v !== "number" || !Number.isFinite(v)) continue;
      let s = this.map.get(k);
      if (!s) this.map.set(k, (s = { x: [], y: [], t: [] }));
      if (s.x.length && x <= s.x[s.x.length - 1]) continue;
      s.x.push(x);
      s.y.push(v);
      s.t.push(typeof record.timestamp === "number" ? record.timestamp : null);
      added = true;
    }
    return added;
  }

  get(key) { return this.map.get(key) || { x: [], y: [], t: [] }; }
  /** The earliest timestamp of any series: "relative time" counts from it. */
  firstTime() { let m = null; for (const s of this.map.values()) if (s.t[0] !== null && s.t[0] !== undefined) m = m === null ? s.t[0] : Math.min(m, s.t[0]); return m; }
  has(key) { return this.map.has(key); }
  last(key) { const s = this.map.get(key); return s ? s.y[s.y.length - 1] : undefined; }
  lastX() { let m; for (const s of this.map.values()) m = Math.max(m ?? -Infinity, s.x[s.x.length - 1]); return m; }
  longest() { let n = 0; for (const s of this.map.values()) n = Math.max(n, s.x.length); return n; }
}

/**
 * TensorBoard's debiased EMA: last = last*s + (1-s)*y; smoothed = last / (1 - s^n), n = finite values so far.
 * A constant series is returned as is (the debiasing would only add float noise); non-finite values pass through.
 */
export function smooth(ys, s) {
  if (!(s > 0) || ys.length < 2) return ys;
  const first = ys.find(Number.isFinite);
  if (ys.every((y) => !Number.isFinite(y) || y === first)) return ys;
  let last = 0, n = 0;
  return ys.map((y) => {
    if (!Number.isFinite(y)) return y;
    last = last * s + (1 - s) * y;
    n += 1;
    return last / (1 - s ** n);
  });
}
