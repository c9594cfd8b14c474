"""Generation CLI and API: every decoder through the one protocol, plain and gated modes, trajectories, trained gates
used at inference, the agent paired with its own LM, why each sample stopped, clear errors."""
import json
import unittest

import torch
import yaml

from core.errors import TidalError
from core.manifest import load_manifest
from core.paths import PROJECT_ROOT
from core.testing import slow
from plugins.tidal.DataPipeline import EOT_TOKEN_ID
from plugins.tidal.Decoding import DECODERS
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.Generator import DECODER_KEYWORDS, load_generator
from plugins.tidal.tests.support import TempDirTestCase, rl_config, run_python, tiny_config
from plugins.tidal.TransformerLM import TransformerLM, model_state_dict


class GeneratorTestCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        torch.manual_seed(0)
        self.config = tiny_config()
        self.config_path = self.tmp / "tiny.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.model = TransformerLM(50257, self.config)
        self.checkpoint = self.tmp / "model.pth"
        torch.save(model_state_dict(self.model), self.checkpoint)

    def rl_checkpoint(self, with_gates=False, lm_checkpoint="default", name="rl.pth", action_base=None,
                      **config_overrides):
        """An RL checkpoint as train_rl writes it; `lm_checkpoint` is the LM it names (default: this test's)."""
        config = rl_config(**{"RL_ACTION_MODE": "modulation", "RL_AGENT_TYPE": "beta", **config_overrides})
        state = {"agent_state_dict": create_agent(config).state_dict(), "config": config,
                 "action_base": action_base}
        if lm_checkpoint is not None:
            state["lm_checkpoint"] = str(self.checkpoint if lm_checkpoint == "default" else lm_checkpoint)
        if with_gates:
            for block in self.model.transformer_blocks:
                torch.nn.init.normal_(block.ffn_gate.net[2].weight, std=3.0)
            state["gate_state_dict"] = {k: v for k, v in self.model.state_dict().items() if "_gate." in k}
        path = self.tmp / name
        torch.save(state, path)
        return path

    def eos_checkpoint(self):
        """A model that always says end-of-text next: every sample stops at once."""
        model = TransformerLM(50257, self.config)
        with torch.no_grad():
            model.output_projection.bias[EOT_TOKEN_ID] = 1e4
        path = self.tmp / "eos.pth"
        torch.save(model_state_dict(model), path)
        return path


class TestGeneratorAPI(GeneratorTestCase):
    def test_plain_generation_is_reproducible_with_a_seed(self):
        handle = load_generator(self.config_path, self.checkpoint)
        a = handle.generate("Once upon a time", max_tokens=12, seed=3)
        b = handle.generate("Once upon a time", max_tokens=12, seed=3)
        self.assertEqual(a["text"], b["text"])
        self.assertTrue(a["text"].startswith("Once upon a time"))
        self.assertLessEqual(a["tokensGenerated"], 12)
        self.assertNotIn("trajectory", a)

    def test_fixed_modulation_sets_the_sampling_parameters_and_records_a_trajectory(self):
        handle = load_generator(self.config_path, self.checkpoint)
        out = handle.generate("The little cat", max_tokens=6, gating_mode="fixed", modulation=1.0, seed=0)
        traj = out["trajectory"]
        self.assertEqual(len(traj["gateSignals"]), out["tokensGenerated"])
        self.assertTrue(all(m == [1.0] for m in traj["gateSignals"]))
        self.assertEqual(traj["effects"][0]["top_k"], 100)
        self.assertAlmostEqual(traj["effects"][0]["temperature"], 2.0)
        self.assertEqual(len(traj["tokenTexts"]), len(traj["tokenIds"]))

    def test_random_mode_varies_m_per_token(self):
        out = load_generator(self.config_path, self.checkpoint).generate("Mom said to", max_tokens=8,
                                                                         gating_mode="random", seed=1)
        self.assertGreater(len({m[0] for m in out["trajectory"]["gateSignals"]}), 1)

    def test_learned_mode_uses_the_agent(self):
        handle = load_generator(self.config_path, self.checkpoint, self.rl_checkpoint())
        out = handle.generate("One day, a boy", max_tokens=5, gating_mode="learned", seed=0)
        self.assertTrue(all(0.0 <= m[0] <= 1.0 for m in out["trajectory"]["gateSignals"]))

    def test_trained_gate_weights_are_loaded_and_change_the_model(self):
        plain = load_generator(self.config_path, self.checkpoint)
        gated = load_generator(self.config_path, self.checkpoint, self.rl_checkpoint(with_gates=True))
        self.assertTrue(gated.gates_trained)
        x = torch.tensor([[1, 2, 3]])
        g = torch.full((1, 1), 0.9)
        self.assertFalse(torch.allclose(plain.model(x, gate_signals=g).logits, gated.model(x, gate_signals=g).logits))

    def test_every_decoder_generates_through_the_one_protocol(self):
        handle = load_generator(self.config_path, self.checkpoint)
        cases = {"plain": {"temperature": 0.9, "top_k": 20, "top_p": 0.9}, "greedy": {}, "min_p": {"min_p": 0.1},
                 "mirostat": {"tau": 3.0, "eta": 0.1}, "edt": {"t0": 1.0, "theta": 1.0, "n": 0.8}}
        self.assertEqual(set(cases), set(DECODERS))
        for name, params in cases.items():
            with self.subTest(decoder=name):
                out = handle.generate("Once upon a time", max_tokens=6, decoder=name, decoder_params=params, seed=1)
                self.assertTrue(out["text"].startswith("Once upon a time"))
                self.assertEqual(out["decoder"]["decoder"], name)
                self.assertEqual(out["tokensGenerated"], 6)
        greedy = [handle.generate("The dog", max_tokens=5, decoder="greedy", seed=s)["text"] for s in (1, 2)]
        self.assertEqual(greedy[0], greedy[1])  # greedy ignores the sampling stream

    def test_the_plain_decoder_keeps_the_seed_defaults(self):
        out = load_generator(self.config_path, self.checkpoint).generate("Hi", max_tokens=3, seed=0)
        self.assertEqual((out["decoder"]["temperature"], out["decoder"]["top_k"]), (0.8, 50))

    def test_a_parameter_the_decoder_does_not_take_is_a_clear_error(self):
        handle = load_generator(self.config_path, self.checkpoint)
        with self.assertRaises(TidalError) as ctx:
            handle.generate("Hi", max_tokens=3, decoder="mirostat", decoder_params={"top_k": 5})
        self.assertIn("top_k", str(ctx.exception))
        with self.assertRaises(TidalError) as ctx:
            handle.generate("Hi", max_tokens=3, decoder="beam")
        self.assertIn("min_p", str(ctx.exception))  # names the valid decoders

    def test_gated_modes_refuse_a_decoder_or_sampling_parameters_the_controller_would_override(self):
        handle = load_generator(self.config_path, self.checkpoint)
        for kwargs in ({"decoder": "mirostat"}, {"decoder_params": {"temperature": 0.5}}):
            with self.subTest(**kwargs), self.assertRaises(TidalError) as ctx:
                handle.generate("Hi", max_tokens=3, gating_mode="fixed", **kwargs)
            self.assertIn("controller", str(ctx.exception))

    def test_each_sample_says_why_it_stopped(self):
        stopped = load_generator(self.config_path, self.eos_checkpoint()).generate("Hi", max_tokens=8, seed=0,
                                                                                  num_samples=2)
        self.assertEqual((stopped["stopReason"], stopped["stopReasons"], stopped["tokensGenerated"]),
                         ("eos", ["eos", "eos"], 0))
        ran = load_generator(self.config_path, self.checkpoint).generate("Hi", max_tokens=4, seed=0)
        self.assertEqual((ran["stopReason"], ran["tokensGenerated"]), ("length", 4))

    def test_the_manifest_decoders_are_the_decoding_modules(self):
        generation = load_manifest(PROJECT_ROOT / "plugins/tidal/manifest.yaml").generation
        self.assertEqual([d.id for d in generation.decoders], list(DECODERS))
        handle = load_generator(self.config_path, self.checkpoint)
        for spec in generation.decoders:  # every slider the playground shows reaches the decoder it belongs to
            with self.subTest(decoder=spec.id):
                params = {DECODER_KEYWORDS[p]: generation.parameter(p).default for p in spec.parameters}
                out = handle.generate("Hi", max_tokens=2, decoder=spec.id, decoder_params=params, seed=0)
                for key, value in params.items():
                    self.assertAlmostEqual(out["decoder"][key], value)  # describe() reports its keywords

    def test_learned_mode_shows_the_parameters_the_controller_sets_per_token(self):
        handle = load_generator(self.config_path, self.checkpoint, self.rl_checkpoint())
        out = handle.generate("One day, a boy", max_tokens=5, gating_mode="learned", seed=0)
        effects = out["trajectory"]["effects"]
        self.assertEqual(len(effects), out["tokensGenerated"])
        self.assertEqual(set(effects[0]), {"temperature", "top_k", "top_p", "min_p", "repetition_penalty"})
        self.assertEqual(out["decoder"]["decoder"], "controlled")

    def test_a_residual_agent_decodes_around_its_base_decoder(self):
        base = {"temperature": 0.9, "min_p": 0.05, "top_k": 0, "top_p": 1.0}
        rl = self.rl_checkpoint(action_base=base, RL_ACTION_MODE="residual", RL_AGENT_TYPE="categorical")
        handle = load_generator(self.config_path, self.checkpoint, rl)
        out = handle.generate("One day, a boy", max_tokens=5, gating_mode="learned", seed=0)
        self.assertEqual(out["decoder"]["action_mode"], "residual")
        table = {(round(t * 0.9, 5), round(m * 0.05, 5), p) for t, m, p in out["decoder"]["table"]}
        for effects in out["trajectory"]["effects"]:
            self.assertIn((round(effects["temperature"], 5), round(effects["min_p"], 5),
                           round(effects["repetition_penalty"], 5)), table)
        fixed = handle.generate("Hi", max_tokens=3, gating_mode="fixed", modulation=0, seed=0)
        self.assertAlmostEqual(fixed["trajectory"]["effects"][0]["temperature"], 0.9, places=6)  # action 0: the base

    def test_the_agent_defaults_to_its_own_lm_and_a_mismatch_is_a_warning(self):
        own = load_generator(self.config_path, None, self.rl_checkpoint())
        self.assertEqual(own.checkpoint, self.checkpoint)
        self.assertEqual(own.generate("Hi", max_tokens=3, gating_mode="learned", seed=0)["warnings"], [])
        other = self.tmp / "other-lm.pth"
        torch.save(model_state_dict(TransformerLM(50257, self.config)), other)
        mismatched = load_generator(self.config_path, other, self.rl_checkpoint())
        warnings = mismatched.generate("Hi", max_tokens=3, gating_mode="learned", seed=0)["warnings"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("model.pth", warnings[0])
        self.assertIn("other-lm.pth", warnings[0])

    def test_the_agent_lm_falls_back_to_the_rl_experiment_metadata(self):
        rl_dir = self.tmp / "rl-run"
        rl_dir.mkdir()
        (rl_dir / "metadata.json").write_text(json.dumps({"type": "rl", "source_checkpoint": str(self.checkpoint)}))
        rl = self.rl_checkpoint(lm_checkpoint=None, name="rl-run/rl_checkpoint_final.pth")
        self.assertEqual(load_generator(self.config_path, None, rl).checkpoint, self.checkpoint)
        with self.assertRaises(TidalError) as ctx:  # neither the checkpoint nor a metadata file names the LM
            load_generator(self.config_path, None, self.rl_checkpoint(lm_checkpoint=None, name="bare.pth"))
        self.assertIn("checkpoint", str(ctx.exception))

    def test_user_errors_are_tidal_errors(self):
        handle = load_generator(self.config_path, self.checkpoint)
        for kwargs in ({"prompt": "   "}, {"prompt": "hi", "decoder_params": {"temperature": -1.0}},
                       {"prompt": "hi", "max_tokens": 0},
                       {"prompt": "hi", "gating_mode": "learned"}, {"prompt": "hi", "gating_mode": "fixed",
                                                                   "modulation": 1.5},
                       {"prompt": "hi", "gating_mode": "bogus"}):
            with self.subTest(**kwargs), self.assertRaises(TidalError):
                handle.generate(**kwargs)

    def test_checkpoint_for_another_config_is_a_clear_error(self):
        other = self.tmp / "other.yaml"
        other.write_text(yaml.safe_dump(tiny_config(EMBED_DIM=64)))
        with self.assertRaises(TidalError) as ctx:
            load_generator(other, self.checkpoint)
        self.assertIn("shape", str(ctx.exception))


@slow
class TestGeneratorCLI(GeneratorTestCase):
    def cli(self, *argv, checkpoint=None):
        return run_python("-m", "plugins.tidal.Generator", "--config", str(self.config_path), "--checkpoint",
                          str(checkpoint or self.checkpoint), "--prompt", "Once upon a time", "--max_tokens", "4",
                          "--seed", "0", *argv)

    def test_each_decoder_from_the_command_line(self):
        cases = {"min_p": ["--min_p", "0.1"], "mirostat": ["--tau", "3", "--eta", "0.1"],
                 "edt": ["--edt_t0", "1.0", "--edt_theta", "1.0", "--edt_n", "0.8"], "greedy": []}
        for name, flags in cases.items():
            with self.subTest(decoder=name):
                proc = self.cli("--decoder", name, *flags, "--json")
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(json.loads(proc.stdout)["decoder"]["decoder"], name)
        self.assertEqual(json.loads(self.cli("--decoder", "mirostat", "--tau", "2.5", "--json").stdout)
                         ["decoder"]["tau"], 2.5)

    def test_a_flag_the_decoder_does_not_take_or_an_unknown_decoder_is_one_line(self):
        for argv, fragments in ((["--decoder", "mirostat", "--top_k", "5"], ["top_k"]),
                                (["--decoder", "beam"], ["beam", "mirostat"]),
                                (["--gating-mode", "fixed", "--temperature", "0.5"], ["controller"])):
            with self.subTest(argv=argv):
                proc = self.cli(*argv)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
                for fragment in fragments:
                    self.assertIn(fragment, proc.stderr)

    def test_the_stop_reason_is_printed(self):
        proc = self.cli(checkpoint=self.eos_checkpoint())
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("end-of-text", proc.stderr)
        self.assertIn("length limit", self.cli().stderr)
        self.assertEqual(json.loads(self.cli("--json").stdout)["stopReasons"], ["length"])

    def test_learned_mode_without_checkpoint_uses_the_agent_lm_and_warns_on_a_mismatch(self):
        rl = self.rl_checkpoint()
        proc = run_python("-m", "plugins.tidal.Generator", "--config", str(self.config_path), "--prompt", "Hi",
                          "--max_tokens", "3", "--rl-agent", "--rl-checkpoint", str(rl), "--json")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["warnings"], [])
        other = self.tmp / "other-lm.pth"
        torch.save(model_state_dict(TransformerLM(50257, self.config)), other)
        proc = self.cli("--rl-agent", "--rl-checkpoint", str(rl), checkpoint=other)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("warning: the RL agent was trained on", proc.stderr)

    def test_seed_command_prints_text(self):
        proc = run_python("plugins/tidal/Generator.py", "--config", str(self.config_path), "--checkpoint",
                          str(self.checkpoint), "--prompt", "Once upon a time", "--max_tokens", "5",
                          "--temperature", "0.8", "--top_k", "50", "--seed", "0")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(proc.stdout.startswith("Once upon a time"))

    def test_json_and_verbose_modes(self):
        base = ["-m", "plugins.tidal.Generator", "--config", str(self.config_path), "--checkpoint",
                str(self.checkpoint), "--prompt", "Hi", "--max_tokens", "4", "--seed", "0", "--gating-mode", "fixed",
                "--modulation", "0.25"]
        out = json.loads(run_python(*base, "--json").stdout)
        self.assertEqual(out["trajectory"]["gateSignals"][0], [0.25])
        verbose = run_python(*base, "--verbose")
        self.assertEqual(verbose.returncode, 0, verbose.stderr)
        self.assertIn("top_k", verbose.stdout)

    def test_errors_are_one_line(self):
        cases = [
            (["--checkpoint", str(self.tmp / "missing.pth"), "--prompt", "hi"], "missing.pth"),
            (["--checkpoint", str(self.checkpoint), "--prompt", ""], "prompt"),
            (["--checkpoint", str(self.config_path), "--prompt", "hi"], "tiny.yaml"),
        ]
        for argv, fragment in cases:
            with self.subTest(argv=argv):
                proc = run_python("-m", "plugins.tidal.Generator", "--config", str(self.config_path), *argv)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                self.assertIn(fragment, proc.stderr)
                self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)


@slow
class TestCorruptCheckpointCLI(GeneratorTestCase):
    """`python -m plugins.tidal.Generator --checkpoint <broken file>`: exit 2 and exactly one stderr line naming the
    file, never a traceback."""

    def assert_one_line_error(self, checkpoint):
        proc = run_python("-m", "plugins.tidal.Generator", "--config", str(self.config_path), "--checkpoint",
                          str(checkpoint), "--prompt", "hi")
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn(str(checkpoint), proc.stderr)

    def test_truncated_and_foreign_files(self):
        weights = self.checkpoint.read_bytes()
        files = {"truncated.pth": weights[:len(weights) // 2], "header-only.pth": weights[:64],
                 "garbage.pth": bytes(range(256)) * 8}
        for name, data in files.items():
            (self.tmp / name).write_bytes(data)
        torch.save([1, 2, 3], self.tmp / "list.pth")
        torch.save({"other": torch.zeros(2)}, self.tmp / "other-model.pth")
        for name in [*files, "list.pth", "other-model.pth"]:
            with self.subTest(file=name):
                self.assert_one_line_error(self.tmp / name)

    def test_an_empty_file(self):  # torch raises a bare EOFError, with no message, for an empty file
        (self.tmp / "empty.pth").write_bytes(b"")
        self.assert_one_line_error(self.tmp / "empty.pth")


if __name__ == "__main__":
    unittest.main()
