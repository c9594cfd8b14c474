// Runs table (#/runs): every run with its effective hyperparameters (config with overrides) and final metrics,
// sortable by any column, and the config diff between two ticked runs (#/runs?diff=<a>,<b>).
// Only hyperparameters that differ between runs are columns by default: the rest is the same for every row.
import { api, expUrl } from "../api.js";
import { fmtNum, fmtTime, h, mount, shortId } from "../dom.js";
import { reportError } from "../toast.js";
import { statusBadge, typeBadge } from "./experiment.js";

const show = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? fmtNum(v) : typeof v === "object" ? JSON.stringify(v) : String(v));

const missing = (v) => v === undefined || v === null;

/** Compare two present cell values: numbers numerically, anything else as text. */
function compare(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(typeof a === "object" ? JSON.stringify(a) : a).localeCompare(String(typeof b === "object" ? JSON.stringify(b) : b), undefined, { numeric: true });
}

export function renderRuns(root, route) {
  let data = null, sort = { key: "createdAt", dir: -1 }, allParams = false;
  const selected = new Set((route.params.get("diff") || "").split(",").filter(Boolean));
  const table = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading runs…"));
  const diffBox = h("div", { "data-testid": "config-diff-box" });
  const diffButton = h("button", { class: "btn", type: "button", id: "runs-diff", disabled: true, onclick: () => { location.hash = `#/runs?diff=${[...selected].map(encodeURIComponent).join(",")}`; } }, "Compare configs");
  mount(root, h("div", { class: "page-head" }, h("h1", {}, "Runs"),
    h("p", { class: "muted" }, "Effective hyperparameters (config with overrides) and the last value of each metric. Click a column to sort; tick two runs to compare their configs.")),
  h("div", { class: "toolbar" }, diffButton,
    h("label", { class: "control" }, h("input", { type: "checkbox", id: "runs-all-params", onchange: (e) => { allParams = e.target.checked; draw(); } }), "Show every hyperparameter")),
  h("section", { class: "card" }, table), diffBox);

  const columns = () => {
    const varying = data.paramKeys.filter((k) => new Set(data.runs.map((r) => JSON.stringify(r.params[k] ?? null))).size > 1);
    return [
      { key: "name", label: "Run", get: (r) => r.name || r.id },
      { key: "type", label: "Type", get: (r) => r.type },
      { key: "status", label: "Status", get: (r) => r.status },
      { key: "createdAt", label: "Created", get: (r) => r.createdAt },
      ...data.metricKeys.map((k) => ({ key: `final:${k}`, label: k, get: (r) => r.final[k], metric: true })),
      ...(allParams ? data.paramKeys : varying).map((k) => ({ key: `param:${k}`, label: k, get: (r) => r.params[k], param: true })),
    ];
  };

  function cell(col, r) {
    if (col.key === "name") {
      return h("td", {}, h("a", { href: `#/exp/${encodeURIComponent(r.id)}`, title: r.id }, r.name || shortId(r.id)),
        r.tags.map((t) => h("span", { class: "tag" }, t)));
    }
    if (col.key === "type") return h("td", {}, typeBadge(r.type));
    if (col.key === "status") return h("td", {}, statusBadge(r.status));
    if (col.key === "createdAt") return h("td", {}, fmtTime(r.createdAt));
    return h("td", { class: "num mono" }, show(col.get(r)));
  }

  function draw() {
    if (!data) return;
    if (!data.runs.length) return mount(table, h("p", { class: "muted" }, "No runs yet."));
    const cols = columns();
    const col = cols.find((c) => c.key === sort.key) || cols[3];
    // runs without the column's value go last in either direction: they have nothing to rank by
    const rank = (a, b) => { const va = col.get(a), vb = col.get(b); return missing(va) || missing(vb) ? missing(va) - missing(vb) : sort.dir * compare(va, vb); };
    const rows = [...data.runs].sort((a, b) => rank(a, b) || compare(a.id, b.id));
    diffButton.disabled = selected.size !== 2;
    mount(table, h("table", { class: "table runs-table", "data-testid": "runs-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), cols.map((c) => h("th", {
        class: `sortable${c.metric || c.param ? " num" : ""}${c.key === sort.key ? " sorted" : ""}`, "data-testid": "run-col", "data-key": c.key,
        "aria-sort": c.key === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none", title: c.param ? "hyperparameter" : c.metric ? "final value" : "",
        onclick: () => { sort = { key: c.key, dir: sort.key === c.key ? -sort.dir : c.metric || c.param ? 1 : -1 }; draw(); },
      }, c.label, c.key === sort.key ? (sort.dir > 0 ? " ▲" : " ▼") : "")))),
      h("tbody", {}, rows.map((r) => h("tr", { "data-testid": "run-row", "data-id": r.id },
        h("td", {}, h("input", { type: "checkbox", class: "run-select", "aria-label": `select ${r.id}`, checked: selected.has(r.id), onchange: (e) => {
          if (e.target.checked) selected.add(r.id); else selected.delete(r.id);
          diffButton.disabled = selected.size !== 2;
        } })),
        cols.map((c) => cell(c, r)))))));
  }

  async function showDiff(ids) {
    if (ids.length !== 2) return mount(diffBox);
    mount(diffBox, h("section", { class: "card" }, h("p", { class: "muted" }, "Comparing configs…")));
    try {
      const [a, b] = ids;
      const diff = await api(`${expUrl(a, "config-diff")}?${new URLSearchParams({ other: b })}`);
      const name = (id) => data?.runs.find((r) => r.id === id)?.name || shortId(id);
      mount(diffBox, h("section", { class: "card" }, h("h3", {}, `Config diff: ${name(a)} → ${name(b)}`),
        h("p", { class: "muted" }, `${diff.differences.length} key${diff.differences.length === 1 ? "" : "s"} differ, ${diff.same} equal.`),
        diff.differences.length ? h("table", { class: "table", "data-testid": "config-diff" },
          h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, name(a)), h("th", {}, name(b)))),
          h("tbody", {}, diff.differences.map((d) => h("tr", { "data-key": d.key, class: `diff-${d.change}` },
            h("td", { class: "mono" }, d.key), h("td", { class: "mono" }, d.change === "added" ? "—" : show(d.a)), h("td", { class: "mono" }, d.change === "removed" ? "—" : show(d.b))))))
          : h("p", {}, "The two runs have the same effective config.")));
    } catch (err) {
      mount(diffBox);
      reportError(err);
    }
  }

  api("/api/experiments/table").then((body) => { data = body; draw(); }).catch((err) => { mount(table, h("p", { class: "muted" }, "Could not load the runs.")); reportError(err); });
  showDiff([...selected]);
  return {
    update(next) {
      if (next.name !== "runs") return false;
      const ids = (next.params.get("diff") || "").split(",").filter(Boolean);
      selected.clear();
      ids.forEach((id) => selected.add(id));
      draw();
      showDiff(ids);
      return true;
    },
  };
}
