// A run's name, tags and notes on its page: shown under the title, edited in place and saved with
// PATCH /api/experiments/<id> (the bearer token, like every change), which keeps them in the run's metadata.json.
import { api, expUrl } from "../api.js";
import { h, mount } from "../dom.js";
import { refreshExperiments } from "../state.js";
import { reportError } from "../toast.js";

const parseTags = (text) => [...new Set(text.split(",").map((t) => t.trim()).filter(Boolean))];

export function runInfo(exp) {
  const box = h("div", { class: "run-info", "data-testid": "run-info" });
  let info = { name: exp.name ?? null, tags: exp.tags || [], notes: exp.notes ?? null };

  function view() {
    mount(box,
      h("div", { class: "run-info-line" },
        h("span", { class: info.name ? "run-name" : "run-name muted", "data-testid": "run-name" }, info.name || "Unnamed run"),
        info.tags.map((t) => h("span", { class: "tag", "data-testid": "run-tag" }, t)),
        h("button", { class: "btn ghost small", type: "button", id: "run-edit", onclick: edit }, "Edit name, tags, notes")),
      info.notes && h("p", { class: "run-notes muted", "data-testid": "run-notes" }, info.notes));
  }

  function edit() {
    const name = h("input", { id: "run-name-input", type: "text", maxlength: 200, value: info.name || "", placeholder: "a short name" });
    const tags = h("input", { id: "run-tags-input", type: "text", value: info.tags.join(", "), placeholder: "comma-separated, e.g. baseline, sweep-lr" });
    const notes = h("textarea", { id: "run-notes-input", rows: 3, maxlength: 20000, placeholder: "what this run is for" });
    notes.value = info.notes || "";
    const save = async (e) => {
      e.preventDefault();
      const body = { name: name.value.trim() || null, tags: parseTags(tags.value), notes: notes.value.trim() || null };
      try {
        const { experiment } = await api(expUrl(exp.id), { method: "PATCH", body, auth: true });
        info = { name: experiment.name, tags: experiment.tags, notes: experiment.notes };
        view();
        refreshExperiments().catch(reportError); // the sidebar shows the new name and tags
      } catch (err) { reportError(err); }
    };
    mount(box, h("form", { class: "run-info-form", onsubmit: save },
      h("label", { class: "field" }, h("span", {}, "Name"), name),
      h("label", { class: "field" }, h("span", {}, "Tags"), tags),
      h("label", { class: "field wide" }, h("span", {}, "Notes"), notes),
      h("div", { class: "dialog-actions" },
        h("button", { class: "btn ghost", type: "button", onclick: view }, "Cancel"),
        h("button", { class: "btn primary", type: "submit", id: "run-info-save" }, "Save"))));
    name.focus();
  }

  view();
  return box;
}
