"""Configuration loading and validation, `--set` overrides, atomic writes (power-cut safe), the CLI error wrapper."""
import signal
import subprocess
import sys
import textwrap

import torch

from core.errors import ConfigError, TidalError
from core.io import atomic_path, atomic_torch_save
from plugins.tidal.tests.support import PYTHON, TempDirTestCase, wait_for
from plugins.tidal.Utils import apply_overrides, cli_main, load_config, parse_override, read_yaml, validate_against


class TestConfig(TempDirTestCase):
    def test_yaml_1_2_floats_are_numbers(self):
        path = self.tmp / "c.yaml"
        path.write_text("A: 1e-6\nB: 3.0e-4\nC: 5\nD: .5\nE: abc\n")
        self.assertEqual(read_yaml(path), {"A": 1e-6, "B": 3e-4, "C": 5, "D": 0.5, "E": "abc"})

    def test_overrides_parse_values_and_nested_keys(self):
        self.assertEqual(parse_override("LR.BASE_LR=3e-4"), (["LR", "BASE_LR"], 3e-4))
        self.assertEqual(parse_override("FLAG=true"), (["FLAG"], True))
        self.assertEqual(parse_override("L=[1, 2]"), (["L"], [1, 2]))
        config = apply_overrides({"A": 1, "S": {"B": 2}}, ["S.B=5", "A=x"])
        self.assertEqual(config, {"A": "x", "S": {"B": 5}})
        for bad in ("NOEQUALS", "=3", "A.B=1"):
            with self.subTest(bad=bad), self.assertRaises(ConfigError):
                apply_overrides({"A": 1}, [bad])

    def test_validation_names_the_key_and_the_types(self):
        reference = {"N": 1, "X": 0.5, "F": True, "S": {"LR": 0.1}, "OPT": None}
        validate_against({"N": 2, "X": 3, "F": False, "S": {"LR": 1}, "OPT": "anything"}, reference, "c.yaml")
        cases = [({"X": 0.5, "F": True, "S": {"LR": 0.1}, "OPT": None}, "c.yaml: missing key N"),
                 ({"N": "2", "X": 0.5, "F": True, "S": {"LR": 0.1}, "OPT": None},
                  "c.yaml: N must be an integer, got string '2'"),
                 ({"N": 2, "X": 0.5, "F": 1, "S": {"LR": 0.1}, "OPT": None},
                  "c.yaml: F must be a boolean, got integer 1"),
                 ({"N": 2, "X": 0.5, "F": True, "S": {}, "OPT": None}, "c.yaml: missing key S.LR")]
        for config, message in cases:
            with self.subTest(message=message), self.assertRaises(ConfigError) as ctx:
                validate_against(config, reference, "c.yaml")
            self.assertEqual(str(ctx.exception), message)

    def test_unknown_keys_are_refused_naming_the_closest_known_key(self):
        # a typo must not train silently with the default value and the typo saved in the run's config
        reference = {"BATCH_SIZE": 8, "S": {"BASE_LR": 0.1}}
        cases = [({"BATCH_SIZE": 8, "S": {"BASE_LR": 0.1}, "BATCH_SIZ": 4}, "c.yaml: unknown key BATCH_SIZ",
                  "did you mean BATCH_SIZE?"),
                 ({"BATCH_SIZE": 8, "S": {"BASE_LR": 0.1, "BASE_RL": 1}}, "c.yaml: unknown key S.BASE_RL",
                  "did you mean S.BASE_LR?")]
        for config, start, hint in cases:
            with self.subTest(start=start), self.assertRaises(ConfigError) as ctx:
                validate_against(config, reference, "c.yaml")
            self.assertTrue(str(ctx.exception).startswith(start), str(ctx.exception))
            self.assertIn(hint, str(ctx.exception))

    def test_an_unknown_override_or_file_key_is_one_line_naming_the_closest_key(self):
        from plugins.tidal.Utils import BASE_CONFIG_PATH, RL_CONFIG_PATH

        with self.assertRaises(ConfigError) as ctx:
            load_config(BASE_CONFIG_PATH, ["NOT_A_KEY=3"])
        message = str(ctx.exception)
        self.assertIn("--set NOT_A_KEY=3", message)
        self.assertIn("unknown key NOT_A_KEY", message)
        self.assertRegex(message, r"did you mean [A-Z_]+\?$")
        with self.assertRaisesRegex(ConfigError, "unknown key LEARNING_RATE_SCHEDULER.BASE_RL; did you mean "
                                                 "LEARNING_RATE_SCHEDULER.BASE_LR"):
            load_config(BASE_CONFIG_PATH, ["LEARNING_RATE_SCHEDULER.BASE_RL=1e-3"])
        with self.assertRaisesRegex(ConfigError, "unknown key RL_LEARNIN_RATE; did you mean RL_LEARNING_RATE"):
            load_config(RL_CONFIG_PATH, ["RL_LEARNIN_RATE=1e-3"], reference_path=RL_CONFIG_PATH)
        path = self.tmp / "extra.yaml"
        path.write_text(BASE_CONFIG_PATH.read_text() + "EMBED_DIMS: 64\n")
        with self.assertRaisesRegex(ConfigError, f"^{path}: unknown key EMBED_DIMS; did you mean EMBED_DIM\\?$"):
            load_config(path)
        self.assertEqual(load_config(BASE_CONFIG_PATH, ["BATCH_SIZE=8"])["BATCH_SIZE"], 8)

    def test_shipped_configs_validate_against_their_references(self):
        from plugins.tidal.Utils import CONFIG_DIR, RL_CONFIG_PATH

        for name in ("base_config.yaml", "quickstart_config.yaml"):
            load_config(CONFIG_DIR / name)
        load_config(CONFIG_DIR / "rl_quickstart_config.yaml", reference_path=RL_CONFIG_PATH)

    def test_invalid_yaml_and_missing_file_are_config_errors(self):
        bad = self.tmp / "bad.yaml"
        bad.write_text("A: [1, 2\n")
        with self.assertRaises(ConfigError) as ctx:
            read_yaml(bad)
        self.assertIn("bad.yaml", str(ctx.exception))
        with self.assertRaises(ConfigError):
            read_yaml(self.tmp / "missing.yaml")


class TestAtomicWrites(TempDirTestCase):
    def test_failed_write_keeps_the_old_file_and_leaves_no_temp(self):
        target = self.tmp / "state.pth"
        target.write_text("old")
        with self.assertRaises(RuntimeError):
            with atomic_path(target) as tmp:
                tmp.write_text("partial")
                raise RuntimeError("crash mid-write")
        self.assertEqual(target.read_text(), "old")
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), ["state.pth"])

    def test_power_cut_during_a_checkpoint_write_keeps_the_previous_checkpoint(self):
        # A real process is SIGKILLed while torch.save streams a large checkpoint through atomic_torch_save.
        target = self.tmp / "model.pth"
        atomic_torch_save({"w": torch.ones(3)}, target)
        script = textwrap.dedent(f"""
            from core.io import atomic_path
            with atomic_path({str(target)!r}) as tmp:
                with open(tmp, "wb") as f:
                    f.write(b"x" * 1024)
                    f.flush()
                    print("writing", flush=True)
                    while True:                     # a write that never finishes: the power is cut here
                        f.write(b"y" * (1 << 20))
        """)
        proc = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        self.assertEqual(proc.stdout.readline().strip(), "writing")
        wait_for(lambda: any(p.suffix == ".tmp" for p in self.tmp.iterdir()), message="the temporary file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        state = torch.load(target, weights_only=True)  # the previous checkpoint is intact and loads
        torch.testing.assert_close(state["w"], torch.ones(3))


class TestCliMain(TempDirTestCase):
    def test_user_errors_become_one_line_and_exit_2(self):
        @cli_main
        def main():
            raise TidalError("the checkpoint does not match")

        from io import StringIO
        from unittest import mock

        with mock.patch.object(sys, "stderr", StringIO()) as err:
            self.assertEqual(main(), 2)
        self.assertEqual(err.getvalue(), "error: the checkpoint does not match\n")
