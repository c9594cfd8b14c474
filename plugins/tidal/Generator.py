"""Text generation from a trained TransformerLM with any decoder of `Decoding`, plain or gated by a policy.

    python3 plugins/tidal/Generator.py --config plugins/tidal/configs/base_config.yaml \\
        --checkpoint experiments/<id>/transformer-lm_v1.0.0.pth --prompt "Once upon a time" \\
        [--max_tokens 50 --seed 0 --num_samples 1]
        [--decoder plain --temperature 0.8 --top_k 50 --top_p 1.0 --min_p 0 --repetition_penalty 1.0]
        [--decoder min_p --min_p 0.1] [--decoder mirostat --tau 3 --eta 0.1] [--decoder greedy]
        [--decoder edt --edt_t0 1.0 --edt_theta 1.0 --edt_n 0.8]
        [--gating-mode none|fixed|random|learned] [--modulation 0.5] [--rl-agent --rl-checkpoint CKPT [--rl-config Y]]
        [--verbose] [--json]

Gating mode `none` decodes with the named decoder. `fixed` (a constant action), `random` (a random action per
token) and `learned` (the PPO agent) decode with `ControlledDecoder` over the RL action space (the GatingModulator's
m, or the residual grid an RL checkpoint names); the controller sets the sampling parameters, so the CLI refuses
decoder flags there. A continuous action also drives the DynamicGates when the RL checkpoint carries trained gate
weights. In learned mode the LM defaults to the one the agent was trained on, and another one is a warning.
Every sample says why it stopped: "eos" (end-of-text) or "length" (max_tokens). `load_generator` is the same path
for the dashboard and the inference server.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from core.errors import TidalError
from core.names import GATING_MODES, METADATA_FILE
from plugins.tidal.Config import LMConfig, RLConfig
from plugins.tidal.Decoding import ControlledDecoder, DecodeStep, make_decoder
from plugins.tidal.GatingModulator import (
    FixedGatingPolicy,
    GatingModulator,
    RandomGatingPolicy,
    ResidualActionSpace,
    make_action_space,
)
from plugins.tidal.Tokenizer import EOT_TOKEN_ID, get_tokenizer
from plugins.tidal.TransformerLM import GenerationController, load_pretrained, read_checkpoint
from plugins.tidal.Utils import RL_CONFIG_PATH, cli_main, load_config, resolve_project_path

PLAIN_DEFAULTS = {"temperature": 0.8, "top_k": 50}  # the seed's sampling defaults, kept for the plain decoder
# the manifest's (and the API's) parameter ids -> `Decoding.make_decoder` keywords
DECODER_KEYWORDS = {"temperature": "temperature", "topK": "top_k", "topP": "top_p", "minP": "min_p",
                    "repetitionPenalty": "repetition_penalty", "tau": "tau", "eta": "eta", "edtT0": "t0",
                    "edtTheta": "theta", "edtN": "n"}
STOP_REASONS = {"eos": "end-of-text", "length": "length limit"}


class PolicyController(GenerationController):
    """Gated generation: a policy picks an action per row before every token, `ControlledDecoder(action_space)` turns
    it into sampling parameters, and with trained gates a continuous action also scales the DynamicGates. The
    learned policy sees `observer`'s observation; fixed and random policies need none. Records the trajectory."""

    def __init__(self, policy, action_space, observer=None, feed_gates: bool = False, deterministic: bool = False,
                 device="cpu"):
        self.decoder = ControlledDecoder(action_space)
        self.action_space = action_space
        self.policy, self.observer, self.deterministic, self.device = policy, observer, deterministic, device
        # the gates were trained on m in [0, 1]; a discrete index means nothing to them
        self.feed_gates = feed_gates and action_space.kind == "continuous"
        # the action "before" the first token: the modulator's midpoint, or the residual grid's unchanged base
        self.initial_action = 0.5 if action_space.kind == "continuous" else 0.0
        self.actions: list[torch.Tensor] = []
        self.params: list = []
        self.tokens: list[torch.Tensor] = []
        self._logits = None

    def initial_signal(self, batch: int):
        return torch.full((batch, 1), self.initial_action, device=self.device) if self.feed_gates else None

    def decide(self, step, tokens, logits, hidden):
        B, device = tokens.shape[0], logits.device
        if self.observer is None:
            obs = logits.new_zeros(B, 0)  # fixed and random policies read only the batch size and device
        else:
            if step == 0:
                self.observer.reset(B, device)
            previous = self.actions[-1] if self.actions else torch.full((B,), self.initial_action, device=device)
            obs = self.observer(tokens, None, logits, hidden, torch.full((B,), float(step), device=device), previous)
            self._logits = logits
        action = self.policy.act(obs, deterministic=self.deterministic).reshape(-1).to(device)
        self.actions.append(action)
        return (action.unsqueeze(1) if self.feed_gates else None), action

    def record(self, token: torch.Tensor, decided: DecodeStep) -> None:
        self.tokens.append(token)
        self.params.append(decided.params)
        if self.observer is not None:
            self.observer.observe(token, self._logits)

    def trajectory(self, row: int, length: int, token_text) -> dict:
        """Row `row`'s first `length` steps: the action, the parameters it set, the tokens, and each step's `tone` in
        [0, 1] (cool to hot) for colouring: m itself, or for a residual index its temperature against the base."""
        ids = [int(t[row]) for t in self.tokens[:length]]
        effects = [p.row(row) for p in self.params[:length]]
        if self.action_space.kind == "continuous":
            tone = [float(a[row]) for a in self.actions[:length]]
        else:  # log-ratio to the base temperature, ±30 % mapped onto the full scale
            base = self.action_space.base["temperature"]
            tone = [min(1.0, max(0.0, 0.5 + 0.5 * math.log(e["temperature"] / base) / math.log(1.3))) for e in effects]
        return {"gateSignals": [[float(a[row])] for a in self.actions[:length]], "effects": effects, "tone": tone,
                "tokenIds": ids, "tokenTexts": [token_text(i) for i in ids]}


def same_checkpoint(a: Path, b: Path) -> bool:
    """Whether two paths name one checkpoint; experiments move between machines, so the experiment directory and file
    name decide when the paths differ."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return (a.parent.name, a.name) == (b.parent.name, b.name)


def agent_lm_checkpoint(rl_path: Path, rl_state: dict) -> Path | None:
    """The LM checkpoint the agent was trained on: the RL checkpoint's `lm_checkpoint`, else the RL experiment's
    metadata `source_checkpoint`; None when neither names one."""
    named = rl_state.get("lm_checkpoint")
    if named is None:
        metadata = Path(rl_path).parent / METADATA_FILE
        try:
            named = json.loads(metadata.read_text()).get("source_checkpoint") if metadata.is_file() else None
        except (OSError, ValueError, AttributeError):
            named = None
    return Path(named) if named else None


class GeneratorHandle:
    """A loaded model (and optional RL agent) ready to generate; safe to reuse across requests. `checkpoint` is the
    LM's path and `agent_lm` the one the agent was trained on (None without an agent, or when unknown)."""

    def __init__(self, config: LMConfig | Mapping, model, checkpoint: Path | None = None,
                 rl_config: RLConfig | Mapping | None = None, action_base: dict | None = None, agent=None,
                 agent_lm: Path | None = None, gates_trained: bool = False):
        # the action space comes from the RL checkpoint's config, else the shipped rl_config.yaml (read once)
        self.rl_config = RLConfig.of(rl_config) if rl_config is not None else \
            load_config(RL_CONFIG_PATH, reference_path=RL_CONFIG_PATH)
        self.config, self.model, self.checkpoint, self.action_base = LMConfig.of(config), model, checkpoint, action_base
        self.agent, self.agent_lm, self.gates_trained = agent, agent_lm, gates_trained
        self.device = next(model.parameters()).device
        self.tokenizer = get_tokenizer()

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    def _controller(self, gating_mode: str, modulation: float | None, seed: int | None) -> PolicyController:
        if gating_mode == "learned" and self.agent is None:
            raise TidalError("gating mode 'learned' needs an RL checkpoint (--rl-checkpoint)")
        if gating_mode != "learned" and self.action_base is None and self.rl_config.RL_ACTION_MODE == "residual":
            # without an RL checkpoint there is no dev-chosen base decoder: fixed and random play the seed's m
            space: GatingModulator | ResidualActionSpace = GatingModulator(self.rl_config)
        else:
            try:
                space = make_action_space(self.rl_config, self.action_base)
            except (KeyError, ValueError) as exc:
                raise TidalError(f"the RL checkpoint's action space cannot be built: {exc}") from None
        discrete = space.kind == "discrete"
        num_actions = space.num_actions if isinstance(space, ResidualActionSpace) else 0  # (the discrete space)

        def controller(policy, observer=None, deterministic=False):
            return PolicyController(policy, space, observer, self.gates_trained, deterministic, self.device)

        if gating_mode == "fixed":
            a = (0.0 if discrete else 0.5) if modulation is None else modulation
            valid = (a == int(a) and 0 <= a < num_actions) if discrete else 0.0 <= a <= 1.0
            if not valid:
                wanted = f"an action index in [0, {num_actions})" if discrete else "in [0, 1]"
                raise TidalError(f"modulation must be {wanted}, got {a}")
            return controller(FixedGatingPolicy(a))
        if gating_mode == "random":
            return controller(RandomGatingPolicy(seed, num_actions if discrete else None))
        from plugins.tidal.GatingEnvironment import ObservationBuilder

        # as in the environment the agent was trained in: the previous action is observed scaled to [0, 1]
        scale = num_actions - 1 if discrete else 1.0
        observer = ObservationBuilder(self.rl_config, self.model.config, action_scale=scale)
        return controller(self.agent, observer, deterministic=True)

    def _decoder(self, name: str, params: dict):
        if name == "plain":
            params = {**PLAIN_DEFAULTS, **params}
        try:
            return make_decoder(name, **params)
        except ValueError as exc:
            raise TidalError(str(exc)) from None

    def pairing_warnings(self, gating_mode: str) -> list[str]:
        """A learned controller driving an LM it was not trained on reads states it never saw: say so."""
        if gating_mode != "learned" or self.agent_lm is None or self.checkpoint is None:
            return []
        if same_checkpoint(self.agent_lm, self.checkpoint):
            return []
        return [f"the RL agent was trained on {self.agent_lm.parent.name}/{self.agent_lm.name}, not on "
                f"{self.checkpoint.parent.name}/{self.checkpoint.name}: its decisions may not fit this model"]

    def generate(self, prompt: str, max_tokens: int = 50, decoder: str = "plain", decoder_params: dict | None = None,
                 gating_mode: str = "none", modulation: float | None = None, seed: int | None = None,
                 num_samples: int = 1) -> dict:
        """Returns {text, texts, tokensGenerated, stopReason, stopReasons, elapsedMs, gatingMode, decoder, warnings
        [, trajectory, trajectories]}; the unpluralised keys are the first sample's. A stop reason is "eos" when the
        sample ended with end-of-text, "length" when it reached max_tokens. `decoder_params` are `make_decoder`
        keywords; gated modes take none (their controller sets the parameters)."""
        if not prompt or not prompt.strip():
            raise TidalError("the prompt is empty")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise TidalError(f"max_tokens must be a positive integer, got {max_tokens}")
        if gating_mode not in GATING_MODES:
            raise TidalError(f"unknown gating mode {gating_mode!r}; valid: {', '.join(GATING_MODES)}")
        params = {k: v for k, v in (decoder_params or {}).items() if v is not None}
        controller = None
        if gating_mode == "none":
            chosen = self._decoder(decoder, params)
        else:
            if decoder != "plain" or params:
                raise TidalError(f"gating mode {gating_mode!r} decodes with its controller, which sets the sampling "
                                 "parameters per token: drop the decoder and its parameters, or use gating mode none")
            controller = self._controller(gating_mode, modulation, seed)
            chosen = controller.decoder
        ids = self.tokenizer.encode_ordinary(prompt)
        prompt_ids = torch.tensor([ids] * num_samples, device=self.device)
        start = time.perf_counter()
        out = self.model.generate(prompt_ids, max_tokens, decoder=chosen, controller=controller,
                                  eos_token_id=EOT_TOKEN_ID, seed=seed)
        elapsed_ms = (time.perf_counter() - start) * 1000
        texts, counts, reasons = [], [], []
        for row in out[:, len(ids):].tolist():
            ended = EOT_TOKEN_ID in row
            new = row[:row.index(EOT_TOKEN_ID)] if ended else row
            texts.append(prompt + self.tokenizer.decode(new))
            counts.append(len(new))
            reasons.append("eos" if ended else "length")
        result = {"text": texts[0], "texts": texts, "tokensGenerated": counts[0], "stopReason": reasons[0],
                  "stopReasons": reasons, "elapsedMs": elapsed_ms, "gatingMode": gating_mode,
                  "decoder": chosen.describe(), "warnings": self.pairing_warnings(gating_mode)}
        if controller is not None:
            result["trajectories"] = [controller.trajectory(r, counts[r], self.token_text) for r in range(num_samples)]
            result["trajectory"] = result["trajectories"][0]
        return result


def load_generator(config_path, checkpoint_path=None, rl_checkpoint_path=None, device="cpu", rl_config_path=None,
                   config_overrides=()) -> GeneratorHandle:
    """Load the LM (and, with an RL checkpoint, the agent, its action space and any trained gate weights) for
    generation. Without `checkpoint_path` the LM is the one the RL checkpoint's agent was trained on."""
    config = load_config(resolve_project_path(config_path), config_overrides)
    rl_config = action_base = agent_state = agent_lm = gate_state = None
    if rl_config_path is not None:
        rl_config = load_config(resolve_project_path(rl_config_path), reference_path=RL_CONFIG_PATH)
    if rl_checkpoint_path is not None:
        rl_path = resolve_project_path(rl_checkpoint_path)
        rl_state = read_checkpoint(rl_path)
        if not isinstance(rl_state, dict) or "agent_state_dict" not in rl_state:
            raise TidalError(f"{rl_checkpoint_path}: not an RL checkpoint (no agent_state_dict)")
        if rl_config is None:
            # the saved config over the shipped one (checkpoints from before action modes existed all trained the
            # modulation); keys this version no longer has are dropped, as nothing reads them
            saved = {k: v for k, v in rl_state.get("config", {}).items() if k in RLConfig.model_fields}
            rl_config = RLConfig.of({**load_config(RL_CONFIG_PATH, reference_path=RL_CONFIG_PATH).to_dict(),
                                     "RL_ACTION_MODE": "modulation", **saved},
                                    source=f"{rl_checkpoint_path} (its saved RL config)")
        action_base, agent_state = rl_state.get("action_base"), rl_state["agent_state_dict"]
        agent_lm, gate_state = agent_lm_checkpoint(rl_path, rl_state), rl_state.get("gate_state_dict")
    if checkpoint_path is None:
        if agent_lm is None:
            raise TidalError("no LM checkpoint given, and the RL checkpoint does not name the one its agent was "
                             "trained on: pass the LM checkpoint")
        checkpoint_path = agent_lm
    checkpoint = resolve_project_path(checkpoint_path)
    model = load_pretrained(config, checkpoint, device)
    agent = None
    if agent_state is not None:
        from plugins.tidal.GatingPolicyAgent import create_agent

        assert rl_config is not None, "an RL checkpoint's agent comes with its RL config"
        agent = create_agent(rl_config).to(device).eval()
        agent.load_state_dict(agent_state)
    if gate_state:
        model.load_state_dict(gate_state, strict=False)
    return GeneratorHandle(config, model, checkpoint, rl_config, action_base, agent, agent_lm, bool(gate_state))


# CLI flag -> make_decoder keyword; a flag left out is not passed, so each decoder keeps its own defaults
DECODER_FLAGS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                 "repetition_penalty": "repetition_penalty", "tau": "tau", "eta": "eta", "edt_t0": "t0",
                 "edt_theta": "theta", "edt_n": "n"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="Generator.py", description="Generate text with a trained Tidal model.")
    p.add_argument("--config", required=True, help="LM config YAML the checkpoint was trained with")
    p.add_argument("--checkpoint", help="model checkpoint (.pth state dict); with --rl-agent, default: the LM the "
                                        "agent was trained on")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_tokens", type=int, default=50)
    p.add_argument("--decoder", default="plain", help="plain | greedy | min_p | mirostat | edt (gating mode none)")
    p.add_argument("--temperature", type=float, help="plain (default 0.8), min_p, mirostat")
    p.add_argument("--top_k", type=int, help="plain (default 50), min_p; 0 disables it")
    p.add_argument("--top_p", type=float, help="plain, min_p")
    p.add_argument("--min_p", type=float, help="min_p (default 0.1), plain, edt")
    p.add_argument("--repetition_penalty", type=float, help="plain, greedy, min_p")
    p.add_argument("--tau", type=float, help="mirostat: target surprise in bits (default 3)")
    p.add_argument("--eta", type=float, help="mirostat: learning rate (default 0.1)")
    p.add_argument("--edt_t0", type=float, help="edt: base temperature T0 (default 1.0)")
    p.add_argument("--edt_theta", type=float, help="edt: theta (default 1.0)")
    p.add_argument("--edt_n", type=float, help="edt: N in (0, 1) (default 0.8)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--gating-mode", choices=GATING_MODES, help="default: learned with --rl-agent, else none")
    p.add_argument("--modulation", type=float, help="the action for --gating-mode fixed (default: m = 0.5)")
    p.add_argument("--rl-agent", action="store_true",
                   help="let the trained PPO agent choose the action per token (gating mode learned)")
    p.add_argument("--rl-checkpoint", help="RL checkpoint (rl_checkpoint_final.pth)")
    p.add_argument("--rl-config", help="RL config YAML (default: the one stored in the RL checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="print the action and the parameters it set per token")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    args.gating_mode = args.gating_mode or ("learned" if args.rl_agent else "none")
    if args.gating_mode == "learned" and not args.rl_checkpoint:
        p.error("--rl-agent / --gating-mode learned needs --rl-checkpoint")
    if args.num_samples < 1:
        p.error("--num_samples must be >= 1")
    if not args.checkpoint and args.gating_mode != "learned":
        p.error("--checkpoint is required (only the learned mode can default to the agent's LM)")
    return args


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from experiment_utils import resolve_device

    flags = {flag: getattr(args, flag) for flag in DECODER_FLAGS if getattr(args, flag) is not None}
    if args.gating_mode != "none" and (flags or args.decoder != "plain"):
        raise TidalError(f"--gating-mode {args.gating_mode} decodes with its controller, which sets the sampling "
                         f"parameters per token: drop {' '.join('--' + f for f in flags) or '--decoder'}")
    handle = load_generator(args.config, args.checkpoint, args.rl_checkpoint if args.gating_mode == "learned" else None,
                            resolve_device(args.device), args.rl_config)
    params = {DECODER_FLAGS[f]: v for f, v in flags.items()}
    result = handle.generate(args.prompt, args.max_tokens, args.decoder, params, args.gating_mode, args.modulation,
                             args.seed, args.num_samples)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for i, text in enumerate(result["texts"]):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(text)
        if args.verbose and "trajectories" in result:
            print_trajectory(result["trajectories"][i])
    stops = ", ".join(STOP_REASONS[r] for r in result["stopReasons"])
    print(f"\n[{result['tokensGenerated']} tokens in {result['elapsedMs']:.0f} ms, stopped at: {stops}, "
          f"decoder: {result['decoder']['decoder']}, gating: {args.gating_mode}]", file=sys.stderr)
    return 0


def print_trajectory(trajectory: dict) -> None:
    print(f"{'step':>4}  {'action':>6}  {'temp':>5}  {'top_k':>5}  {'top_p':>5}  {'min_p':>5}  {'rep':>5}  token")
    steps = zip(trajectory["gateSignals"], trajectory["effects"], trajectory["tokenTexts"], strict=True)
    for i, (a, e, text) in enumerate(steps):
        print(f"{i:>4}  {a[0]:>6.2f}  {e['temperature']:>5.2f}  {e['top_k']:>5}  {e['top_p']:>5.2f}  "
              f"{e['min_p']:>5.2f}  {e['repetition_penalty']:>5.2f}  {text!r}")


if __name__ == "__main__":
    sys.exit(main())
