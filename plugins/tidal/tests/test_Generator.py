"""Generation CLI and API: plain and gated modes, trajectories, trained gates used at inference, clear errors."""
import json
import unittest

import torch
import yaml

from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.Generator import load_generator
from plugins.tidal.TransformerLM import TransformerLM, model_state_dict
from plugins.tidal.Utils import TidalError
from tests.support import TempDirTestCase, rl_config, run_python, tiny_config


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

    def rl_checkpoint(self, with_gates=False):
        config = rl_config()
        state = {"agent_state_dict": create_agent(config).state_dict(), "config": config}
        if with_gates:
            for block in self.model.transformer_blocks:
                torch.nn.init.normal_(block.ffn_gate.net[2].weight, std=3.0)
            state["gate_state_dict"] = {k: v for k, v in self.model.state_dict().items() if "_gate." in k}
        path = self.tmp / "rl.pth"
        torch.save(state, path)
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
        self.assertFalse(torch.allclose(plain.model(x, gate_signals=g), gated.model(x, gate_signals=g)))

    def test_user_errors_are_tidal_errors(self):
        handle = load_generator(self.config_path, self.checkpoint)
        for kwargs in ({"prompt": "   "}, {"prompt": "hi", "temperature": -1.0}, {"prompt": "hi", "max_tokens": 0},
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


class TestGeneratorCLI(GeneratorTestCase):
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
