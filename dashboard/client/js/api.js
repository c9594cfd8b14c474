// The one HTTP helper: JSON in/out, the bearer token for mutating calls, and readable errors for every failure
// (the server's `error` string plus the field named in `detail`, 401 and 429 spelled out for the user).
import { forgetToken, requireToken } from "./dialogs.js";

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

const MSG_401 = "The server refused the token (401). Enter the token printed by `make dashboard`.";

/** api("/api/jobs", {method: "POST", body, auth: true}) → parsed JSON, or throws ApiError. */
export async function api(path, { method = "GET", body, auth = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth) headers.Authorization = `Bearer ${await requireToken()}`;
  let res;
  try {
    res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Cannot reach the server (${method} ${path}): ${err.message}`, 0, null);
  }
  const data = await res.json().catch(() => null);
  if (res.ok) return data;
  if (res.status === 401) {
    forgetToken(); // so the next action asks again instead of replaying a wrong token
    throw new ApiError(MSG_401, 401, data);
  }
  if (res.status === 429) {
    throw new ApiError(`Rate limited — try again in ${res.headers.get("Retry-After") || "a few"} s`, 429, data);
  }
  throw new ApiError(describe(res.status, data), res.status, data);
}

function describe(status, data) {
  const detail = data?.detail;
  let extra = "";
  if (Array.isArray(detail)) {
    extra = detail.map((d) => (d?.field ? `${d.field}: ${d.message ?? ""}` : JSON.stringify(d))).join("; ");
  } else if (detail && typeof detail === "object") {
    extra = Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  } else if (detail) extra = String(detail);
  return `${data?.error || `HTTP ${status}`} (${status})${extra ? ` — ${extra}` : ""}`;
}

export const expUrl = (id, sub = "") => `/api/experiments/${encodeURIComponent(id)}${sub ? `/${sub}` : ""}`;

/** Metric history of one series kind, bounded server-side to about `maxPoints` per key. */
export function fetchMetrics(id, series, maxPoints, keys, signal) {
  const q = new URLSearchParams({ series, mode: "historical", maxPoints: String(Math.max(10, Math.min(20000, Math.round(maxPoints)))) });
  if (keys?.length) q.set("keys", keys.join(","));
  return api(`${expUrl(id, "metrics")}?${q}`, { signal });
}
