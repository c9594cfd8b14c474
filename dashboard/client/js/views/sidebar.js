// Sidebar: the experiment list (newest first) with name, tags, type/status badges, a live dot and a compare
// checkbox; a search box (id, name, tags, notes) and a type filter narrow it.
// Re-rendered from state on "experiments" (fired after job-update events), never by polling.
import { $, h, mount, shortId } from "../dom.js";
import { emit, on, state } from "../state.js";
import { statusBadge, typeBadge } from "./experiment.js";

const when = (t) => (t ? new Date(t * 1000).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "");

function item(exp, activeId) {
  const href = `#/exp/${encodeURIComponent(exp.id)}`;
  return h("li", { class: exp.id === activeId ? "exp-item active" : "exp-item", "data-testid": "experiment-item", "data-id": exp.id },
    h("a", { class: "exp-link", href, title: exp.id },
      h("div", { class: "exp-top" }, typeBadge(exp.type), h("span", { class: "exp-name" }, exp.name || shortId(exp.id)),
        exp.live && h("span", { class: "live-dot", title: "live" })),
      h("div", { class: "exp-meta" }, statusBadge(exp.status), h("span", { class: "muted" }, when(exp.createdAt))),
      exp.tags?.length > 0 && h("div", { class: "exp-tags" }, exp.tags.map((t) => h("span", { class: "tag" }, t)))),
    h("label", { class: "compare-toggle", title: "Overlay this run on the charts" },
      h("input", { type: "checkbox", class: "compare", checked: state.compare.has(exp.id), onchange: (e) => {
        if (e.target.checked) state.compare.add(exp.id); else state.compare.delete(exp.id);
        emit("compare");
      } }), "compare"));
}

/** Whether a run matches every word of the search (in its id, name, tags or notes) and the type filter. */
function matches(exp, words, type) {
  if (type && exp.type !== type) return false;
  const text = [exp.id, exp.name, exp.notes, ...(exp.tags || [])].filter(Boolean).join(" ").toLowerCase();
  return words.every((w) => text.includes(w));
}

export function initSidebar(list, count, hint) {
  let activeId = null;
  const search = $("#experiment-search"), typeFilter = $("#experiment-type-filter");
  const render = () => {
    const words = (search?.value || "").toLowerCase().split(/\s+/).filter(Boolean);
    const shown = state.experiments.filter((e) => matches(e, words, typeFilter?.value || ""));
    count.textContent = !state.experiments.length ? "" : shown.length === state.experiments.length ? String(shown.length) : `${shown.length} / ${state.experiments.length}`;
    hint.hidden = state.experiments.length < 2; // comparing needs at least two runs
    mount(list, shown.length ? shown.map((e) => item(e, activeId))
      : h("li", { class: "muted exp-empty" }, state.experiments.length ? "No run matches the search." : "No experiments yet. Start a training job from the Jobs page."));
  };
  search?.addEventListener("input", render);
  typeFilter?.addEventListener("change", render);
  on("experiments", render);
  on("route", (route) => {
    activeId = route.name === "exp" ? route.id : null;
    for (const li of list.children) li.classList.toggle("active", li.dataset.id === activeId);
  });
  render();
}
