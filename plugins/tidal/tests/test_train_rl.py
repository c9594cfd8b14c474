"""The RL training CLI as users run it: the seed command end to end (checkpoints, history, ablation), SIGTERM →
interrupted checkpoint → --resume, and one-line errors."""
import json
import os
import signal
import subprocess
from pathlib import Path

import torch
import yaml

from core.paths import PROJECT_ROOT
from core.testing import slow
from plugins.tidal.tests.support import PYTHON, TempDirTestCase, rl_config, run_python, tiny_config, wait_for
from plugins.tidal.TransformerLM import TransformerLM, model_state_dict, read_checkpoint

TINY_RL = dict(RL_NUM_ENVS=2, RL_SAMPLES_PER_PROMPT=2, RL_ROLLOUT_STEPS=8, RL_MAX_EPISODE_LENGTH=6,
               RL_BATCH_SIZE=16, RL_NUM_PROMPTS=8, RL_DEV_PROMPTS=3, RL_ABLATION_NUM_PROMPTS=3, RL_STUDY_BATCH=6,
               RL_PROMPT_MIN_LENGTH=12, RL_PROMPT_MAX_LENGTH=16, RL_ABLATION_BOOTSTRAP_SAMPLES=20,
               RL_JUDGE_STORIES=50, RL_CHECKPOINT_INTERVAL=1, RL_TOTAL_TIMESTEPS=32, RL_SEEDS=[42],
               RL_STUDY_TEMPERATURES=[0.7, 1.0], RL_STUDY_GRID_TEMPERATURES=[1.0], RL_STUDY_TOP_PS=[0.8],
               RL_STUDY_TOP_KS=[20], RL_STUDY_MIN_PS=[0.1], RL_STUDY_MIROSTAT_TAU_FACTORS=[1.0],
               RL_STUDY_EDT_T0S=[1.0], RL_STUDY_EDT_THETAS=[1.0], RL_RESIDUAL_TEMPERATURE_FACTORS=[1.0, 0.7],
               RL_RESIDUAL_MIN_P_FACTORS=[1.0], RL_RESIDUAL_PENALTIES=[1.0, 1.3], RL_NUM_ACTIONS=4)


class TrainRLTestCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.env = {"EXPERIMENTS_DIR": str(self.tmp / "experiments"), "REDIS_URL": ""}
        self.lm_config = self.tmp / "lm.yaml"
        self.lm_config.write_text(yaml.safe_dump(tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"))))
        self.rl_config = self.tmp / "rl.yaml"
        self.rl_config.write_text(yaml.safe_dump(rl_config(**TINY_RL)))
        torch.manual_seed(0)
        self.checkpoint = self.tmp / "lm.pth"
        torch.save(model_state_dict(TransformerLM(50257, tiny_config())), self.checkpoint)

    def args(self, *extra):
        return ["plugins/tidal/train_rl.py", "--config", str(self.lm_config), "--rl-config", str(self.rl_config),
                "--checkpoint", str(self.checkpoint), *extra]

    def stop_when(self, checkpoint: str, **overrides) -> Path:
        """Run the seed command with `overrides`, SIGTERM it once `checkpoint` exists; assert exit 143 and a
        stopped status; return the experiment directory."""
        self.rl_config.write_text(yaml.safe_dump(rl_config(**{**TINY_RL, **overrides})))
        proc = subprocess.Popen([PYTHON, *self.args()], cwd=PROJECT_ROOT, env={**os.environ, **self.env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        wait_for(lambda: list((self.tmp / "experiments").glob(f"*/{checkpoint}")), timeout=180, message=checkpoint)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 143, err[-2000:])
        exp = self.experiment()
        self.assertEqual(json.loads((exp / "dashboard_metrics/status.json").read_text())["status"], "stopped")
        return exp

    def experiment(self):
        (exp,) = (self.tmp / "experiments").iterdir()
        return exp


@slow
class TestTrainRL(TrainRLTestCase):
    def test_seed_command_trains_checkpoints_and_runs_the_ablation(self):
        proc = run_python(*self.args(), env=self.env, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        exp = self.experiment()
        self.assertRegex(exp.name, r"-config_[0-9a-f]{10}-rl_[0-9a-f]{10}$")
        meta = json.loads((exp / "metadata.json").read_text())
        self.assertEqual((meta["type"], meta["source_checkpoint"]), ("rl", str(self.checkpoint)))
        for name in ("rl_checkpoint_iter_1.pth", "rl_checkpoint_iter_2.pth", "rl_checkpoint_final.pth",
                     "ablation_results.json", "base_config.yaml", "rl_config.yaml",
                     "rl_metrics/rl_training_metrics.json",
                     "dashboard_metrics/rl_metrics.jsonl"):
            self.assertTrue((exp / name).is_file(), name)
        state = read_checkpoint(exp / "rl_checkpoint_final.pth")
        self.assertEqual(state["global_step"], 32)
        history = json.loads((exp / "rl_metrics/rl_training_metrics.json").read_text())["history"]
        self.assertEqual(state["lm_checkpoint"], str(self.checkpoint))
        self.assertEqual(set(state["action_base"]), {"temperature", "min_p", "top_k", "top_p"})
        for key in ("episode_rewards", "policy_loss", "value_loss", "entropy", "entropy_coef", "gate_modulation",
                    "explained_variance", "reward_quality", "reward_repetition", "reward_overlap", "approx_kl",
                    "clip_fraction"):
            self.assertEqual(len(history[key]), 2, key)
        study = json.loads((exp / "ablation_results.json").read_text())
        self.assertEqual([p["name"] for p in study["learned"]], ["learned (RL seed 42)"])
        self.assertIn("mirostat", study["families"])
        self.assertIn("verdict:", proc.stdout)
        self.assertIn("human continuation", proc.stdout)

    def test_a_study_added_to_a_finished_run_lands_in_that_run_with_every_seed(self):
        self.rl_config.write_text(yaml.safe_dump(rl_config(**{**TINY_RL, "RL_SEEDS": [42, 43]})))
        first = run_python(*self.args(), env=self.env, timeout=300)
        self.assertEqual(first.returncode, 0, first.stderr[-3000:])
        exp = self.experiment()
        (exp / "ablation_results.json").unlink()
        again = run_python(*self.args("--resume", str(exp / "rl_checkpoint_final.pth"), "--ablation"), env=self.env,
                           timeout=300)
        self.assertEqual(again.returncode, 0, again.stderr[-3000:])
        self.assertEqual([exp], list((self.tmp / "experiments").iterdir()))  # no new, chartless experiment
        study = json.loads((exp / "ablation_results.json").read_text())
        self.assertEqual([p["name"] for p in study["learned"]],
                         ["learned (RL seed 42)", "learned (RL seed 43)", "learned (mean over seeds)"])
        for final in (exp / "rl_checkpoint_final.pth", exp / "seed_43" / "rl_checkpoint_final.pth"):
            self.assertEqual(read_checkpoint(final)["global_step"], 32)  # not retrained

    def test_sigterm_saves_an_interrupted_checkpoint_that_resumes(self):
        exp = self.stop_when("rl_checkpoint_iter_1.pth", RL_TOTAL_TIMESTEPS=10 ** 7)
        interrupted = exp / "rl_checkpoint_interrupted.pth"
        step = read_checkpoint(interrupted)["global_step"]
        self.assertGreaterEqual(step, 16)
        resumed = run_python(*self.args("--resume", str(interrupted), "--timesteps", str(step + 16),
                                        "--experiment-dir", str(exp)), env=self.env, timeout=300)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        self.assertEqual(read_checkpoint(exp / "rl_checkpoint_final.pth")["global_step"], step + 16)

    def test_sigterm_during_the_study_ends_the_run_as_stopped(self):
        exp = self.stop_when("rl_checkpoint_final.pth", RL_ABLATION_NUM_PROMPTS=300)  # signalled in the study
        self.assertFalse((exp / "ablation_results.json").exists())

    def test_errors_are_one_line(self):
        bad_rl = self.tmp / "bad.yaml"
        bad_rl.write_text(yaml.safe_dump({k: v for k, v in rl_config(**TINY_RL).items() if k != "RL_GAMMA"}))
        for argv, fragment in ((["--checkpoint", str(self.tmp / "none.pth")], "none.pth"),
                               (["--rl-config", str(bad_rl)], "RL_GAMMA"),
                               (["--set", "NOT_A_KEY=3"], "unknown key NOT_A_KEY; did you mean")):
            with self.subTest(argv=argv):
                proc = run_python(*self.args(*argv), env=self.env)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                self.assertIn(fragment, proc.stderr)
