// Overview (#/): open the newest experiment, or welcome a fresh install with the next steps.
import { h, mount } from "../dom.js";
import { state } from "../state.js";

export function renderOverview(root) {
  if (state.experiments.length) {
    location.replace(`#/exp/${encodeURIComponent(state.experiments[0].id)}`); // replace: Back does not bounce here
    return { dispose() {} };
  }
  mount(root, h("div", { class: "empty-state welcome" },
    h("h1", {}, "Welcome to Tidal"),
    h("p", { class: "muted" }, "A small gated language model whose decoding is steered by a PPO agent. No experiments yet."),
    h("ol", {},
      h("li", {}, "Start a language-model training run from ", h("a", { href: "#/jobs" }, "Jobs"), "."),
      h("li", {}, "Watch its loss, perplexity and throughput live here."),
      h("li", {}, "Train the RL gating controller from the finished checkpoint, then try it in ", h("a", { href: "#/generate" }, "Generate"), ".")),
    h("p", { class: "muted" }, "The API is documented at ", h("a", { href: "/docs", target: "_blank" }, "/docs"), ".")));
  return { dispose() {} };
}
