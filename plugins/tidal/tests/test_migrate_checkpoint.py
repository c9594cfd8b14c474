import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from collections import OrderedDict
from pathlib import Path

import torch

from core.errors import TidalError
from core.paths import PROJECT_ROOT
from core.testing import slow
from plugins.tidal.migrate_checkpoint import main, migrate_gate_dim

EMBED_DIM, GATE_HIDDEN = 64, 32


def old_state_dict(num_blocks=2, gate_inputs=3):
    """A state dict in the old 3-gate layout (gate input weight (32, 3)) plus a few non-gate tensors."""
    torch.manual_seed(0)
    sd = OrderedDict(token_embeddings=torch.randn(100, EMBED_DIM))
    for i in range(num_blocks):
        for gate in ("attn_gate", "ffn_gate"):
            prefix = f"transformer_blocks.{i}.{gate}.net"
            sd[f"{prefix}.0.weight"] = torch.randn(GATE_HIDDEN, gate_inputs)
            sd[f"{prefix}.0.bias"] = torch.randn(GATE_HIDDEN)
            sd[f"{prefix}.2.weight"] = torch.zeros(EMBED_DIM, GATE_HIDDEN)
            sd[f"{prefix}.2.bias"] = torch.full((EMBED_DIM,), 2.0)
        sd[f"transformer_blocks.{i}.ffn.0.weight"] = torch.randn(128, EMBED_DIM)
    sd["output_projection.weight"] = torch.randn(100, EMBED_DIM)
    return sd


def gate_keys(sd):
    return [k for k in sd if k.endswith("gate.net.0.weight")]


class TestMigrateGateDim(unittest.TestCase):
    def test_keeps_the_chosen_input_column_of_every_gate(self):
        old = old_state_dict()
        new, migrated = migrate_gate_dim(old, slice_index=2)
        self.assertEqual(sorted(migrated), sorted(gate_keys(old)))
        self.assertEqual(len(migrated), 4)
        for key in migrated:
            self.assertEqual(new[key].shape, (GATE_HIDDEN, 1))
            torch.testing.assert_close(new[key], old[key][:, 2:3])

    def test_everything_else_is_unchanged_and_the_input_is_not_mutated(self):
        old = old_state_dict()
        new, _ = migrate_gate_dim(old, slice_index=0)
        self.assertEqual(list(new), list(old))
        for key in old:
            if key not in gate_keys(old):
                self.assertTrue(torch.equal(new[key], old[key]), key)
        self.assertEqual(old[gate_keys(old)[0]].shape, (GATE_HIDDEN, 3))

    def test_migrated_gates_fit_a_linear_1_to_32_layer(self):
        new, _ = migrate_gate_dim(old_state_dict())
        layer = torch.nn.Linear(1, GATE_HIDDEN)
        layer.load_state_dict({"weight": new["transformer_blocks.0.attn_gate.net.0.weight"],
                               "bias": new["transformer_blocks.0.attn_gate.net.0.bias"]})

    def test_migration_is_idempotent(self):
        once, _ = migrate_gate_dim(old_state_dict())
        twice, migrated = migrate_gate_dim(once, slice_index=0)
        self.assertEqual(migrated, [])
        for key in once:
            self.assertTrue(torch.equal(once[key], twice[key]), key)

    def test_compiled_model_prefixes_are_migrated_too(self):
        old = OrderedDict((f"_orig_mod.{k}", v) for k, v in old_state_dict().items())
        _, migrated = migrate_gate_dim(old)
        self.assertEqual(len(migrated), 4)

    def test_slice_index_out_of_range_is_a_clear_error(self):
        with self.assertRaisesRegex(TidalError, "slice index 3"):
            migrate_gate_dim(old_state_dict(), slice_index=3)
        with self.assertRaises(TidalError):
            migrate_gate_dim(old_state_dict(), slice_index=-1)


class TestCommandLine(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)

    def run_main(self, *argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_wrapped_checkpoint_keeps_its_other_keys(self):
        src, dst = self.tmp / "old.pth", self.tmp / "new.pth"
        torch.save({"model_state_dict": old_state_dict(), "epoch": 3}, src)
        code, out, _ = self.run_main("--input", str(src), "--output", str(dst))
        self.assertEqual(code, 0)
        self.assertIn("4", out)
        saved = torch.load(dst, weights_only=True)
        self.assertEqual(saved["epoch"], 3)
        self.assertEqual(saved["model_state_dict"]["transformer_blocks.1.ffn_gate.net.0.weight"].shape,
                         (GATE_HIDDEN, 1))

    def test_running_twice_says_nothing_needed_migrating(self):
        src, mid, dst = self.tmp / "old.pth", self.tmp / "mid.pth", self.tmp / "new.pth"
        torch.save(old_state_dict(), src)
        self.assertEqual(self.run_main("--input", str(src), "--output", str(mid))[0], 0)
        code, out, _ = self.run_main("--input", str(mid), "--output", str(dst))
        self.assertEqual(code, 0)
        self.assertIn("already", out)
        self.assertEqual(list(self.tmp.glob(".*.tmp")), [])

    def run_failing(self, *argv):
        code, _, err = self.run_main(*argv)
        return code, err

    def assert_one_line_error(self, code, err, *fragments):
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(err.startswith("error:"), err)
        for fragment in fragments:
            self.assertIn(fragment, err)

    def test_missing_input_is_a_one_line_error(self):
        code, _, err = self.run_main("--input", str(self.tmp / "nope.pth"), "--output", str(self.tmp / "x.pth"))
        self.assert_one_line_error(code, err, "nope.pth")

    def test_a_file_that_is_not_a_state_dict_is_a_one_line_error(self):
        src = self.tmp / "list.pth"
        torch.save([1, 2, 3], src)
        self.assert_one_line_error(*self.run_failing("--input", str(src), "--output", str(self.tmp / "x.pth")),
                                   "state dict")
        garbage = self.tmp / "garbage.pth"
        garbage.write_bytes(b"not a checkpoint")
        self.assert_one_line_error(*self.run_failing("--input", str(garbage), "--output", str(self.tmp / "x.pth")))

    def test_a_state_dict_without_gates_is_a_one_line_error(self):
        src = self.tmp / "plain.pth"
        torch.save({"layer.weight": torch.zeros(2, 2)}, src)
        self.assert_one_line_error(*self.run_failing("--input", str(src), "--output", str(self.tmp / "x.pth")),
                                   "gate")

    def test_slice_index_out_of_range_is_a_one_line_error(self):
        src = self.tmp / "old.pth"
        torch.save(old_state_dict(), src)
        code, _, err = self.run_main("--input", str(src), "--output", str(self.tmp / "x.pth"), "--slice-index", "7")
        self.assert_one_line_error(code, err, "7")
        self.assertFalse((self.tmp / "x.pth").exists())

    @slow
    def test_module_and_file_forms_run_as_processes(self):
        src, dst = self.tmp / "old.pth", self.tmp / "new.pth"
        torch.save(old_state_dict(), src)
        as_file = subprocess.Popen([sys.executable, "plugins/tidal/migrate_checkpoint.py", "--input", str(src),
                                    "--output", str(dst)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        as_module = subprocess.Popen([sys.executable, "-m", "plugins.tidal.migrate_checkpoint", "--input",
                                      str(self.tmp / "missing.pth"), "--output", str(dst)], cwd=self.tmp,
                                     env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        out, err = as_file.communicate(timeout=60)
        self.assertEqual(as_file.returncode, 0, err)
        self.assertEqual(torch.load(dst, weights_only=True)["transformer_blocks.0.attn_gate.net.0.weight"].shape,
                         (GATE_HIDDEN, 1))
        _, err = as_module.communicate(timeout=60)
        self.assertEqual(as_module.returncode, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()
