// Sidebar: the experiment list (newest first) with type/status badges, a live dot and a compare checkbox.
// Re-rendered from state on "experiments" (fired after job-update events), never by polling.
import { h, mount, shortId } from "../dom.js";
import { emit, on, state } from "../state.js";
import { statusBadge, typeBadge } from "./experiment.js";

const when = (t) => (t ? new Date(t * 1000).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "");

function item(exp, activeId) {
  const href = `#/exp/${encodeURIComponent(exp.id)}`;
  return h("li", { class: exp.id === activeId ? "exp-item active" : "exp-item", "data-testid": "experiment-item", "data-id": exp.id },
    h("a", { class: "exp-link", href, title: exp.id },
      h("div", { class: "exp-top" }, typeBadge(exp.type), h("span", { class: "exp-name" }, shortId(exp.id)),
        exp.live && h("span", { class: "live-dot", title: "live" })),
      h("div", { class: "exp-meta" }, statusBadge(exp.status), h("span", { class: "muted" }, when(exp.createdAt)))),
    h("label", { class: "compare-toggle", title: "Overlay this run on the charts" },
      h("input", { type: "checkbox", class: "compare", checked: state.compare.has(exp.id), onchange: (e) => {
        if (e.target.checked) state.compare.add(exp.id); else state.compare.delete(exp.id);
        emit("compare");
      } }), "compare"));
}

export function initSidebar(list, count, hint) {
  let activeId = null;
  const render = () => {
    count.textContent = state.experiments.length ? String(state.experiments.length) : "";
    hint.hidden = state.experiments.length < 2; // comparing needs at least two runs
    mount(list, state.experiments.length ? state.experiments.map((e) => item(e, activeId))
      : h("li", { class: "muted exp-empty" }, "No experiments yet. Start a training job from the Jobs page."));
  };
  on("experiments", render);
  on("route", (route) => {
    activeId = route.name === "exp" ? route.id : null;
    for (const li of list.children) li.classList.toggle("active", li.dataset.id === activeId);
  });
  render();
}
