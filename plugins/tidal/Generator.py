"""Text generation from a trained TransformerLM, plain or gated by a modulation policy.

    python3 plugins/tidal/Generator.py --config plugins/tidal/configs/base_config.yaml \\
        --checkpoint experiments/<id>/transformer-lm_v1.0.0.pth --prompt "Once upon a time" \\
        [--max_tokens 50 --temperature 0.8 --top_k 50 --top_p 1.0 --repetition_penalty 1.0 --seed 0 --num_samples 1]
        [--gating-mode none|fixed|random|learned] [--modulation 0.5] [--rl-agent --rl-checkpoint CKPT [--rl-config Y]]
        [--verbose] [--json]

Gating modes: `none` samples with the given parameters; `fixed` (constant m), `random` (m ~ U(0,1) per token) and
`learned` (the PPO agent) let the GatingModulator set temperature/top-k/top-p/repetition penalty from m, and feed m
to the DynamicGates when the RL checkpoint carries trained gate weights. `load_generator` is the same path for the
dashboard and the inference server.
"""
if __package__ in (None, ""):  # run as a file: make the project root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from plugins.tidal.DataPipeline import EOT_TOKEN_ID, get_tokenizer
from plugins.tidal.GatingModulator import FixedGatingPolicy, GatingModulator, RandomGatingPolicy, effects_dict
from plugins.tidal.TransformerLM import GenerationController, load_pretrained, read_checkpoint
from plugins.tidal.Utils import RL_CONFIG_PATH, TidalError, cli_main, load_config, resolve_project_path

GATING_MODES = ("none", "fixed", "random", "learned")


class ModulatedController(GenerationController):
    """Gated generation: a policy picks m for every token, the modulator turns m into sampling parameters, and when
    the gates were trained m also scales the model's DynamicGates. Records the trajectory as it goes."""

    def __init__(self, policy, modulator: GatingModulator, observer=None, feed_gates: bool = False,
                 deterministic: bool = False, initial_m: float = 0.5):
        self.policy, self.modulator, self.observer = policy, modulator, observer
        self.feed_gates, self.deterministic, self.initial_m = feed_gates, deterministic, initial_m
        self.modulations: list[torch.Tensor] = []
        self.effects: list = []
        self.tokens: list[torch.Tensor] = []

    def initial_signal(self, batch: int):
        return torch.full((batch, 1), self.initial_m) if self.feed_gates else None

    def decide(self, step, tokens, logits, hidden):
        if self.observer is not None:
            previous = self.modulations[-1] if self.modulations else torch.full((tokens.shape[0],), self.initial_m)
            obs = self.observer(tokens, logits, hidden, step, previous.to(logits.device))
        else:
            obs = torch.zeros(tokens.shape[0], 64, device=logits.device)
        with torch.no_grad():
            m = self.policy.act(obs, deterministic=self.deterministic).reshape(-1).to(logits.device)
        effects = self.modulator(m)
        self.modulations.append(m.detach().cpu())
        self.effects.append(effects)
        params = {"temperature": effects.temperature, "top_k": effects.top_k, "top_p": effects.top_p,
                  "repetition_penalty": effects.repetition_penalty}
        return (m.unsqueeze(1) if self.feed_gates else None), params

    def record(self, token, filtered_logits):
        self.tokens.append(token.detach().cpu())

    def trajectory(self, row: int, token_text) -> dict:
        ids = [int(t[row]) for t in self.tokens]
        return {"gateSignals": [[float(m[row])] for m in self.modulations],
                "effects": [effects_dict(e, row) for e in self.effects],
                "tokenIds": ids, "tokenTexts": [token_text(i) for i in ids]}


class GeneratorHandle:
    """A loaded model (and optional RL agent) ready to generate; safe to reuse across requests."""

    def __init__(self, config: dict, model, rl_config: dict | None = None, agent=None, gates_trained: bool = False):
        # the modulator's mapping comes from the RL checkpoint's config, else the shipped rl_config.yaml (read once)
        rl_config = rl_config or load_config(RL_CONFIG_PATH, reference_path=RL_CONFIG_PATH)
        self.config, self.model, self.rl_config, self.agent = config, model, rl_config, agent
        self.gates_trained = gates_trained
        self.device = next(model.parameters()).device
        self.tokenizer = get_tokenizer()

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    def _controller(self, gating_mode: str, modulation: float | None, seed: int | None) -> ModulatedController | None:
        if gating_mode == "none":
            return None
        modulator = GatingModulator(self.rl_config)
        if gating_mode == "fixed":
            m = 0.5 if modulation is None else modulation
            if not 0.0 <= m <= 1.0:
                raise TidalError(f"modulation must be in [0, 1], got {m}")
            return ModulatedController(FixedGatingPolicy(m), modulator, feed_gates=self.gates_trained)
        if gating_mode == "random":
            return ModulatedController(RandomGatingPolicy(seed), modulator, feed_gates=self.gates_trained)
        if gating_mode == "learned":
            if self.agent is None:
                raise TidalError("gating mode 'learned' needs an RL checkpoint (--rl-checkpoint)")
            from plugins.tidal.GatingEnvironment import ObservationBuilder

            observer = ObservationBuilder(self.rl_config, self.model.config)
            return ModulatedController(self.agent, modulator, observer, feed_gates=self.gates_trained, deterministic=True)
        raise TidalError(f"unknown gating mode {gating_mode!r}; valid: {', '.join(GATING_MODES)}")

    def generate(self, prompt: str, max_tokens: int = 50, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 1.0, gating_mode: str = "none", modulation: float | None = None,
                 seed: int | None = None, repetition_penalty: float = 1.0, num_samples: int = 1) -> dict:
        """Returns {text, texts, tokensGenerated, elapsedMs[, trajectory, trajectories]} (text = the first sample)."""
        if not prompt or not prompt.strip():
            raise TidalError("the prompt is empty")
        ids = self.tokenizer.encode_ordinary(prompt)
        try:
            self.model.validate_sampling(temperature, top_k, top_p, repetition_penalty)
        except ValueError as exc:
            raise TidalError(str(exc)) from None
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise TidalError(f"max_tokens must be a positive integer, got {max_tokens}")
        controller = self._controller(gating_mode, modulation, seed)
        prompt_ids = torch.tensor([ids] * num_samples, device=self.device)
        start = time.perf_counter()
        out = self.model.generate(prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty, gate_signals=controller,
                                  eos_token_id=EOT_TOKEN_ID, seed=seed)
        elapsed_ms = (time.perf_counter() - start) * 1000
        texts, counts = [], []
        for row in out[:, len(ids):].tolist():
            new = row[:row.index(EOT_TOKEN_ID)] if EOT_TOKEN_ID in row else row
            texts.append(prompt + self.tokenizer.decode(new))
            counts.append(len(new))
        result = {"text": texts[0], "texts": texts, "tokensGenerated": counts[0], "elapsedMs": elapsed_ms,
                  "gatingMode": gating_mode}
        if controller is not None:
            result["trajectories"] = [self._trim(controller.trajectory(r, self.token_text), counts[r])
                                      for r in range(num_samples)]
            result["trajectory"] = result["trajectories"][0]
        return result

    @staticmethod
    def _trim(trajectory: dict, n: int) -> dict:
        return {k: v[:n] for k, v in trajectory.items()}


def load_generator(config_path, checkpoint_path, rl_checkpoint_path=None, device="cpu", rl_config_path=None,
                   config_overrides=()) -> GeneratorHandle:
    """Load the LM (and, with an RL checkpoint, the agent and any trained gate weights) for generation."""
    config = load_config(resolve_project_path(config_path), config_overrides)
    model = load_pretrained(config, resolve_project_path(checkpoint_path), device)
    rl_config, agent, gates_trained = None, None, False
    if rl_config_path is not None:
        rl_config = load_config(resolve_project_path(rl_config_path), reference_path=RL_CONFIG_PATH)
    if rl_checkpoint_path is not None:
        from plugins.tidal.GatingPolicyAgent import create_agent

        rl_state = read_checkpoint(resolve_project_path(rl_checkpoint_path))
        if not isinstance(rl_state, dict) or "agent_state_dict" not in rl_state:
            raise TidalError(f"{rl_checkpoint_path}: not an RL checkpoint (no agent_state_dict)")
        rl_config = rl_config or {**load_config(RL_CONFIG_PATH, reference_path=RL_CONFIG_PATH), **rl_state.get("config", {})}
        agent = create_agent(rl_config).to(device).eval()
        agent.load_state_dict(rl_state["agent_state_dict"])
        if rl_state.get("gate_state_dict"):
            model.load_state_dict(rl_state["gate_state_dict"], strict=False)
            gates_trained = True
    return GeneratorHandle(config, model, rl_config, agent, gates_trained)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="Generator.py", description="Generate text with a trained Tidal model.")
    p.add_argument("--config", required=True, help="LM config YAML the checkpoint was trained with")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pth state dict)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--gating-mode", choices=GATING_MODES, help="default: learned with --rl-agent, else none")
    p.add_argument("--modulation", type=float, help="m in [0, 1] for --gating-mode fixed (default 0.5)")
    p.add_argument("--rl-agent", action="store_true", help="let the trained PPO agent choose m (gating mode learned)")
    p.add_argument("--rl-checkpoint", help="RL checkpoint (rl_checkpoint_final.pth)")
    p.add_argument("--rl-config", help="RL config YAML (default: the one stored in the RL checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="print the modulation and its effects for every token")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    args.gating_mode = args.gating_mode or ("learned" if args.rl_agent else "none")
    if args.gating_mode == "learned" and not args.rl_checkpoint:
        p.error("--rl-agent / --gating-mode learned needs --rl-checkpoint")
    if args.num_samples < 1:
        p.error("--num_samples must be >= 1")
    return args


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from experiment_utils import resolve_device

    handle = load_generator(args.config, args.checkpoint, args.rl_checkpoint if args.gating_mode == "learned" else None,
                            resolve_device(args.device), args.rl_config)
    result = handle.generate(args.prompt, args.max_tokens, args.temperature, args.top_k, args.top_p, args.gating_mode,
                             args.modulation, args.seed, args.repetition_penalty, args.num_samples)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for i, text in enumerate(result["texts"]):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(text)
        if args.verbose and "trajectories" in result:
            print_trajectory(result["trajectories"][i])
    print(f"\n[{result['tokensGenerated']} tokens in {result['elapsedMs']:.0f} ms, gating: {args.gating_mode}]",
          file=sys.stderr)
    return 0


def print_trajectory(trajectory: dict) -> None:
    print(f"{'step':>4}  {'m':>5}  {'temp':>5}  {'top_k':>5}  {'top_p':>5}  {'rep':>5}  token")
    for i, (m, e, text) in enumerate(zip(trajectory["gateSignals"], trajectory["effects"], trajectory["tokenTexts"])):
        print(f"{i:>4}  {m[0]:>5.2f}  {e['temperature']:>5.2f}  {e['top_k']:>5}  {e['top_p']:>5.2f}  "
              f"{e['repetition_penalty']:>5.2f}  {text!r}")


if __name__ == "__main__":
    sys.exit(main())
