// Generation view (#/generate): one or two (A/B) configurations built from the manifest (gating modes, decoders and
// their parameter sliders), run with the same prompt and seed; the text with each token coloured by its action, a
// chart of the action and the sampling parameters it set per token, why each sample stopped, and any warning.
import { api } from "../api.js";
import { Chart, chartsAvailable, colour } from "../charts.js";
import { field, fmtNum, h, mount, select } from "../dom.js";
import { checkpointOptions, state } from "../state.js";
import { reportError } from "../toast.js";

/** Diverging scale for m: blue (low) → light grey (0.5) → orange (high), translucent so text reads in both themes.
 * The square root spreads the small departures from 0.5 a trained controller makes across more visible shades. */
export function mColour(m) {
  const d = Math.max(-1, Math.min(1, (m - 0.5) * 2)), t = Math.sqrt(Math.abs(d));
  const [r, g, b] = (d < 0 ? [47, 127, 216] : [234, 120, 30]).map((c) => Math.round(140 + (c - 140) * t));
  return `rgba(${r}, ${g}, ${b}, ${(0.14 + 0.5 * t).toFixed(3)})`;
}

const legend = () => h("div", { class: "m-legend" }, h("span", {}, "cooler"), h("i", { class: "m-scale" }), h("span", {}, "hotter"),
  h("small", { class: "muted" }, "colour: m, or a residual action's temperature against its base decoder; each action sets temperature, top-k, top-p, min-p and repetition penalty for its token"));

const STOP_TEXT = { eos: "stopped at end-of-text", length: "stopped at the length limit" };
const AGENT_LM = ""; // the LM option that leaves the choice to the server: the one the RL agent was trained on
// parameters that are not the decoder's: maxTokens for every mode, modulation for fixed
const OWN_SLIDERS = new Set(["maxTokens", "modulation"]);

/** One configuration column; `sfx` is "" (A) or "-b" (B), appended to every id. */
function configPanel(sfx, route) {
  const { modes = [], parameters = [], decoders = [] } = state.manifest?.generation || {};
  const lm = checkpointOptions("lm"), rl = checkpointOptions("rl");
  const p = (name) => (sfx ? null : route.params.get(name)); // deep links preselect side A only
  const withWanted = (opts, v) => (v && !opts.some((o) => o.value === v) ? [{ value: v, label: v }, ...opts] : opts);
  const mode = select({ id: `gen-mode${sfx}` }, modes.map((m) => ({ value: m.id, label: m.displayName })), p("mode") || (sfx || !rl.length ? "fixed" : "learned"));
  const firstLM = p("checkpoint") || lm.find((o) => o.phase === "final")?.value || lm[0]?.value;
  // learned mode pairs the agent with its own LM unless the user picks another (the answer then carries a warning)
  const checkpoint = select({ id: `gen-checkpoint${sfx}` }, [{ value: AGENT_LM, label: "The RL agent's own LM" }, ...withWanted(lm, p("checkpoint"))],
    !p("checkpoint") && mode.value === "learned" ? AGENT_LM : firstLM);
  const agentOption = checkpoint.options[0];
  const rlCheckpoint = select({ id: `gen-rl-checkpoint${sfx}` }, withWanted(rl, p("rlCheckpoint")), p("rlCheckpoint") || rl.find((o) => o.value.endsWith("_final.pth"))?.value || rl[0]?.value);
  const rlRow = field("RL checkpoint", rlCheckpoint, rl.length ? "" : "No RL checkpoints yet");
  const decoder = select({ id: `gen-decoder${sfx}` }, decoders.map((d) => ({ value: d.id, label: d.displayName })), p("decoder") || decoders[0]?.id);
  const decoderRow = field("Decoder", decoder);
  const value = (prm, input) => (prm.integer ? Math.round(Number(input.value)) : Number(input.value));
  const sliders = parameters.map((prm) => {
    const out = h("output", {}, fmtNum(prm.default));
    const input = h("input", { id: `gen-${prm.id}${sfx}`, type: "range", "data-param": prm.id, min: prm.min, max: prm.max, step: prm.step, value: prm.default,
      oninput: () => { out.value = fmtNum(value(prm, input)); } });
    return { prm, input, row: h("label", { class: "field slider" }, h("span", {}, prm.displayName, out), input) };
  });
  const controlled = h("p", { class: "muted", "data-testid": `gen-controlled${sfx}` },
    "The controller sets temperature, top-k, top-p, min-p and the repetition penalty for every token; they are shown per token with the output.");
  const modeOf = () => modes.find((m) => m.id === mode.value) || {};
  const decoderOf = () => decoders.find((d) => d.id === decoder.value) || { parameters: [] };
  /** Whether a slider does something in the current mode and decoder: only those are shown and sent. */
  const active = (prm) => (prm.id === "maxTokens" || (prm.id === "modulation" ? mode.value === "fixed"
    : mode.value === "none" && decoderOf().parameters.includes(prm.id)));
  const sync = () => {
    rlRow.hidden = !modeOf().requiresRLCheckpoint;
    decoderRow.hidden = mode.value !== "none";
    controlled.hidden = mode.value === "none";
    agentOption.disabled = agentOption.hidden = mode.value !== "learned";
    if (checkpoint.value === AGENT_LM && mode.value !== "learned") checkpoint.value = firstLM || "";
    for (const s of sliders) s.row.hidden = !active(s.prm);
  };
  mode.addEventListener("change", () => {
    if (mode.value === "learned" && !p("checkpoint")) checkpoint.value = AGENT_LM;
    sync();
  });
  decoder.addEventListener("change", sync);
  sync();

  const output = h("div", { class: "gen-text", "data-testid": `gen-output${sfx}` }, h("span", { class: "muted" }, "The generated text appears here."));
  const stats = h("div", { class: "gen-stats muted", "data-testid": `gen-stats${sfx}` });
  const warnings = h("div", { "data-testid": `gen-warnings${sfx}` });
  const legendSlot = h("div");
  const chart = chartsAvailable() ? new Chart({ key: "m", title: "Action and the sampling parameters it set, per token", xLabel: "token", sync: `gen${sfx}`, testid: `gen-chart${sfx}`, y2Label: "T · rep. penalty", height: 200 }) : null;
  if (chart) chart.el.hidden = true;

  function request(prompt, seed) {
    const body = { prompt, gatingMode: mode.value };
    if (checkpoint.value !== AGENT_LM) body.checkpoint = checkpoint.value;
    if (mode.value === "none") body.decoder = decoder.value;
    for (const { prm, input } of sliders) if (active(prm)) body[prm.id] = value(prm, input);
    if (modeOf().requiresRLCheckpoint) body.rlCheckpoint = rlCheckpoint.value;
    if (seed !== null) body.seed = seed;
    return body;
  }

  function show(prompt, res) {
    const generated = res.text.startsWith(prompt) ? res.text.slice(prompt.length) : res.text;
    const t = res.trajectory;
    mount(stats, `${res.tokensGenerated} tokens · ${Math.round(res.elapsedMs)} ms · `,
      h("span", { "data-testid": `gen-stop${sfx}`, "data-reason": res.stopReason }, STOP_TEXT[res.stopReason] || res.stopReason),
      res.checkpoint && ` · LM ${res.checkpoint}`, res.decoder?.decoder && mode.value === "none" && ` · ${res.decoder.decoder}`);
    mount(warnings, (res.warnings || []).map((w) => h("div", { class: "notice", role: "alert" }, `Warning: ${w}`)));
    if (!t?.tokenTexts?.length) {
      mount(output, h("span", { class: "prompt" }, prompt), h("span", { class: "plain" }, generated));
      mount(legendSlot);
      if (mode.value === "none") stats.append(h("span", { class: "note" }, " · plain sampling has no gating trajectory, so tokens are not coloured"));
      if (chart) chart.el.hidden = true;
      return;
    }
    const ms = t.gateSignals.map((g) => (Array.isArray(g) ? g[0] : g)); // one action per token (B=1 rows)
    mount(output, h("span", { class: "prompt" }, prompt), t.tokenTexts.map((text, i) => {
      const e = t.effects[i] || {};
      const tone = t.tone ? t.tone[i] : ms[i];
      return h("span", { class: "tok", "data-m": ms[i].toFixed(2), style: `background:${mColour(tone)}`,
        title: `action ${ms[i].toFixed(2)} · T=${fmtNum(e.temperature, 3)}, top-k=${e.top_k}, top-p=${fmtNum(e.top_p, 3)}, min-p=${fmtNum(e.min_p, 3)}, rep=${fmtNum(e.repetition_penalty, 3)}` }, text);
    }));
    mount(legendSlot, legend());
    if (!chart) return;
    chart.el.hidden = false;
    const x = ms.map((_, i) => i), eff = (k) => t.effects.map((e) => e?.[k]);
    chart.render({ series: [
      { label: "action", x, y: ms, color: colour(0), primary: true },
      { label: "top-p", x, y: eff("top_p"), color: colour(1) },
      { label: "min-p", x, y: eff("min_p"), color: colour(4) },
      { label: "temperature", x, y: eff("temperature"), color: colour(2), scale: "y2" },
      { label: "repetition penalty", x, y: eff("repetition_penalty"), color: colour(3), scale: "y2", dash: [5, 3] },
    ] });
  }

  const el = h("div", { class: "gen-side" },
    h("section", { class: "card form" }, h("h3", {}, sfx ? "Configuration B" : "Configuration A"),
      h("div", { class: "form-grid" }, field("Model checkpoint", checkpoint), field("Gating mode", mode), rlRow, decoderRow), controlled, h("div", { class: "sliders" }, sliders.map((s) => s.row))),
    h("section", { class: "card" }, stats, warnings, output, legendSlot), chart?.el);
  return { el, request, show, dispose: () => chart?.destroy() };
}

export function renderGenerate(root, route) {
  const noModel = !checkpointOptions("lm").length && !route.params.get("checkpoint");
  const a = configPanel("", route);
  let b = null; // side B exists only while A/B is on, so each id and data-param hook stays unique otherwise
  const prompt = h("textarea", { id: "gen-prompt", rows: 3 }, "Once upon a time");
  const seed = h("input", { id: "gen-seed", type: "number", min: 0, step: 1, placeholder: "random" });
  const compare = h("input", { id: "gen-compare", type: "checkbox" });
  const run = h("button", { id: "gen-run", class: "btn primary", type: "button", disabled: noModel }, "Generate");
  const sides = h("div", { class: "gen-sides" }, a.el);
  compare.addEventListener("change", () => {
    if (compare.checked && !b) sides.append((b = configPanel("-b", route)).el);
    if (!compare.checked && b) { b.dispose(); b.el.remove(); b = null; }
    sides.classList.toggle("ab", compare.checked);
  });

  run.addEventListener("click", async () => {
    const text = prompt.value;
    if (!text.trim()) return reportError(new Error("Enter a prompt first."));
    // A/B needs one seed for both sides, or the comparison would mix the configuration with sampling noise
    if (seed.value === "" && compare.checked) seed.value = String(Math.floor(Math.random() * 2 ** 31));
    const s = seed.value === "" ? null : Math.round(Number(seed.value));
    run.disabled = true;
    run.textContent = "Generating…";
    try {
      for (const side of b ? [a, b] : [a]) side.show(text, await api("/api/generate", { method: "POST", body: side.request(text, s) }));
    } catch (err) {
      reportError(err);
    } finally {
      run.disabled = false;
      run.textContent = "Generate";
    }
  });

  mount(root, h("div", { class: "page-head" }, h("h1", {}, "Generate")),
    noModel && h("div", { class: "notice" }, "No language-model checkpoint yet. Train one from ", h("a", { href: "#/jobs" }, "Jobs"), " first."),
    h("section", { class: "card form" }, field("Prompt", prompt),
      h("div", { class: "form-row" }, field("Seed", seed), h("label", { class: "control" }, compare, "A/B compare"), h("div", { class: "spacer" }), run)),
    sides);
  return { dispose() { a.dispose(); b?.dispose(); } };
}
