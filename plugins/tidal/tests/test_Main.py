"""The training CLI as users run it: both invocation forms, one-line errors, SIGTERM + --resume, torchrun DDP
on one node and across two nodes."""
import contextlib
import io
import json
import os
import signal
import subprocess
import time
import unittest
import uuid

import yaml

from core.io import read_jsonl
from core.net import free_port
from core.paths import PROJECT_ROOT
from core.testing import kill_process_group, slow
from plugins.tidal.Main import internal_error
from plugins.tidal.tests.support import PYTHON, TempDirTestCase, run_python, tiny_config, wait_for


class MainTestCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.env = {"EXPERIMENTS_DIR": str(self.tmp / "experiments"), "REDIS_URL": ""}

    def write_config(self, **overrides):
        path = self.tmp / "tiny.yaml"
        path.write_text(yaml.safe_dump(tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), **overrides)))
        return str(path)

    def experiments(self):
        return sorted((self.tmp / "experiments").iterdir())

    def assert_one_line_error(self, proc, *fragments):
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
        self.assertEqual(len(lines), 1, proc.stderr)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])


@slow
class TestMainCLI(MainTestCase):
    def test_seed_command_as_a_file_trains_evaluates_and_saves(self):
        proc = run_python("plugins/tidal/Main.py", "--config", self.write_config(), "--max-steps", "4", env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        (exp,) = self.experiments()
        self.assertRegex(exp.name, r"^\d{8}-\d{6}-commit_\w+-config_[0-9a-f]{10}$")
        for name in ("config.yaml", "metadata.json", "transformer-lm_v1.0.0.pth", "training_state.pth",
                     "evaluation_results.json", "dashboard_metrics/metrics.jsonl", "dashboard_metrics/status.json"):
            self.assertTrue((exp / name).is_file(), name)
        results = json.loads((exp / "evaluation_results.json").read_text())
        self.assertEqual([s["prompt"] for s in results["samples"]],
                         ["Once upon a time", "The little cat", "Mom said to", "One day, a boy"])
        self.assertGreater(results["nats_per_byte"], 0)
        self.assertEqual(json.loads((exp / "dashboard_metrics/status.json").read_text())["status"], "completed")

    def test_module_form_and_set_overrides_reach_the_effective_config(self):
        proc = run_python("-m", "plugins.tidal.Main", "--config", self.write_config(), "--max-steps", "2",
                          "--set", "LEARNING_RATE_SCHEDULER.BASE_LR=3e-4", "--set", "EVAL_MAX_NEW_TOKENS=4",
                          env=self.env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        (exp,) = self.experiments()
        effective = yaml.safe_load((exp / "config.yaml").read_text())
        self.assertEqual(effective["LEARNING_RATE_SCHEDULER"]["BASE_LR"], 3e-4)
        self.assertEqual(effective["EVAL_MAX_NEW_TOKENS"], 4)

    def test_errors_are_one_line_without_traceback(self):
        cases = [
            (["--config", str(self.tmp / "missing.yaml")], ["not found", "missing.yaml"]),
            (["--config", self.write_config(), "--set", "BATCH_SIZE=abc"], ["BATCH_SIZE", "integer"]),
            (["--config", self.write_config(), "--set", "DESIRED_BATCH_SIZE=12"], ["DESIRED_BATCH_SIZE"]),
            (["--config", self.write_config(), "--set", "NOSUCHSECTION.KEY=1"], ["NOSUCHSECTION"]),
            (["--config", self.write_config(), "--set", "NOT_A_KEY=3"], ["NOT_A_KEY", "did you mean"]),
            (["--config", self.write_config(), "--set", "BATCH_SIZ=3"], ["BATCH_SIZ", "did you mean BATCH_SIZE?"]),
            (["--resume", str(self.tmp / "nope")], ["nope"]),
        ]
        for argv, fragments in cases:
            with self.subTest(argv=argv):
                self.assert_one_line_error(run_python("-m", "plugins.tidal.Main", *argv, env=self.env), *fragments)

    def test_config_missing_a_key_names_file_and_key(self):
        config = tiny_config()
        del config["PATIENCE"]
        path = self.tmp / "broken.yaml"
        path.write_text(yaml.safe_dump(config))
        self.assert_one_line_error(run_python("-m", "plugins.tidal.Main", "--config", str(path), env=self.env),
                                   "broken.yaml", "PATIENCE")

    def test_bad_config_files_are_exactly_one_stderr_line_naming_file_and_key(self):
        wrong_type = tiny_config(BATCH_SIZE="eight")
        nested = tiny_config()
        nested["LEARNING_RATE_SCHEDULER"]["BASE_LR"] = [1, 2]
        missing = tiny_config()
        del missing["VOCAB_SIZE"]
        cases = {"wrong_type.yaml": (yaml.safe_dump(wrong_type), "BATCH_SIZE"),
                 "nested.yaml": (yaml.safe_dump(nested), "LEARNING_RATE_SCHEDULER.BASE_LR"),
                 "missing.yaml": (yaml.safe_dump(missing), "VOCAB_SIZE"),
                 "not_yaml.yaml": ("A: [1, 2\n", "YAML"), "a_list.yaml": ("- 1\n- 2\n", "mapping"),
                 "extra_key.yaml": (yaml.safe_dump(tiny_config(PATIENTS=3)), "did you mean PATIENCE?")}
        for name, (text, key) in cases.items():
            with self.subTest(config=name):
                path = self.tmp / name
                path.write_text(text)
                proc = run_python("-m", "plugins.tidal.Main", "--config", str(path), env=self.env)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                (line,) = proc.stderr.strip().splitlines()
                self.assertIn(str(path), line)
                self.assertIn(key, line)
        self.assertFalse((self.tmp / "experiments").exists(), "no experiment directory for a rejected config")


@slow
class TestInternalErrors(TempDirTestCase):
    """An unexpected exception becomes one line for the user; its traceback goes where the rank can write it."""

    def test_rank_zero_appends_the_traceback_to_the_runs_log(self):
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            error = internal_error(exc, self.tmp, is_main=True)
        self.assertIn("RuntimeError: boom", (self.tmp / "training.log").read_text())
        self.assertEqual(str(error), f"training failed: RuntimeError: boom (traceback in {self.tmp / 'training.log'})")

    def test_other_ranks_print_it_their_node_may_not_hold_the_experiment_directory(self):
        # on a cluster without a shared experiments dir only rank 0's node has it (README, ADR 0017): writing the log
        # there raised FileNotFoundError, which replaced the real error
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                raise RuntimeError("boom")
            except RuntimeError as exc:
                error = internal_error(exc, self.tmp / "not-on-this-node", is_main=False)
        self.assertIn("RuntimeError: boom", stderr.getvalue())
        self.assertEqual(str(error), "training failed: RuntimeError: boom (traceback above)")


class TestOffline(MainTestCase):
    def test_an_unreachable_hub_fails_within_seconds_with_one_line_recorded_in_the_run(self):
        env = {**self.env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(self.tmp / "hf"),
               "HF_HUB_OFFLINE": "", "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": "", "all_proxy": ""}
        start = time.monotonic()
        proc = run_python("-m", "plugins.tidal.Main", "--config", self.write_config(DATASET="tidal-tests/no-such-set"),
                          "--max-steps", "2", env=env)
        self.assertLess(time.monotonic() - start, 15, "no minute of retries against an unreachable hub")
        self.assertEqual(proc.returncode, 2, proc.stderr)
        (line,) = proc.stderr.strip().splitlines()
        for fragment in ("tidal-tests/no-such-set", "unreachable", "builtin:tinytales"):
            self.assertIn(fragment, line)
        (exp,) = self.experiments()
        status = json.loads((exp / "dashboard_metrics/status.json").read_text())
        self.assertEqual(status["status"], "failed")
        self.assertIn("unreachable", status["error"])
        self.assertIn("unreachable", (exp / "training.log").read_text(), "the run's log ends with the error")


@slow
class TestSignals(MainTestCase):
    def test_sigterm_checkpoints_and_resume_finishes(self):
        config = self.write_config(CHECKPOINT_INTERVAL=0)
        proc = subprocess.Popen([PYTHON, "-m", "plugins.tidal.Main", "--config", config, "--max-steps", "100000"],
                                cwd=PROJECT_ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        def metrics():
            return next((self.tmp / "experiments").glob("*/dashboard_metrics/metrics.jsonl"), None)

        wait_for(lambda: metrics() and len(read_jsonl(metrics())) >= 3, timeout=120, message="training to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 143, err)
        (exp,) = self.experiments()
        self.assertTrue((exp / "training_state.pth").is_file())
        self.assertEqual(json.loads((exp / "dashboard_metrics/status.json").read_text())["status"], "stopped")
        stopped_at = max(r["step"] for r in read_jsonl(exp / "dashboard_metrics/metrics.jsonl"))
        resumed = run_python("-m", "plugins.tidal.Main", "--resume", str(exp), "--max-steps", str(stopped_at + 2),
                             env=self.env)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        steps = [r["step"] for r in read_jsonl(exp / "dashboard_metrics/metrics.jsonl") if "Losses/Total" in r]
        self.assertEqual(steps[-2:], [stopped_at + 1, stopped_at + 2])
        self.assertTrue((exp / "transformer-lm_v1.0.0.pth").is_file())


    def test_a_stopped_run_resumed_without_max_steps_ends_like_the_uninterrupted_run(self):
        # --max-steps 60 of a 133-step epoch: a resume that forgot the horizon trains on to the epoch end
        config = self.write_config(CHECKPOINT_INTERVAL=0)
        full = run_python("-m", "plugins.tidal.Main", "--config", config, "--max-steps", "60", env=self.env)
        self.assertEqual(full.returncode, 0, full.stderr)
        (full_exp,) = self.experiments()
        proc = subprocess.Popen([PYTHON, "-m", "plugins.tidal.Main", "--config", config, "--max-steps", "60"],
                                cwd=PROJECT_ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        def metrics():
            return next((e / "dashboard_metrics/metrics.jsonl" for e in self.experiments() if e != full_exp), None)

        wait_for(lambda: metrics() and len(read_jsonl(metrics())) >= 3, timeout=120, message="training to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 143, err)
        exp = metrics().parent.parent
        resumed = run_python("-m", "plugins.tidal.Main", "--resume", str(exp), env=self.env)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        def series(e, key):
            return {r["step"]: r[key] for r in read_jsonl(e / "dashboard_metrics/metrics.jsonl") if key in r}

        self.assertEqual(max(series(exp, "Learning Rate")), 60)
        self.assertEqual(series(exp, "Learning Rate"), series(full_exp, "Learning Rate"))
        progress = [r["Progress"] for r in read_jsonl(exp / "dashboard_metrics/metrics.jsonl") if "Progress" in r]
        self.assertEqual(progress, sorted(progress), "progress never goes backwards")
        self.assertEqual(json.loads((exp / "dashboard_metrics/status.json").read_text())["status"], "completed")


def train_losses(exp) -> dict:
    """{optimizer step: training loss} from an experiment's metrics."""
    return {r["step"]: r["Losses/Total"] for r in read_jsonl(exp / "dashboard_metrics/metrics.jsonl")
            if "Losses/Total" in r}


def tail(path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


@slow
class TestDistributed(MainTestCase):
    STEPS = 3

    def train_single_process(self):
        """The reference: one process with the global batch of 8 the distributed runs split 2 x 4."""
        single = run_python("-m", "plugins.tidal.Main",
                            "--config", self.write_config(BATCH_SIZE=8, DESIRED_BATCH_SIZE=8),
                            "--max-steps", str(self.STEPS), env=self.env)
        self.assertEqual(single.returncode, 0, single.stderr)
        (single_exp,) = self.experiments()
        return single_exp

    def assert_same_losses(self, single_exp, dist_exp):
        a, b = train_losses(single_exp), train_losses(dist_exp)
        steps = list(range(1, self.STEPS + 1))
        self.assertEqual(sorted(b), steps)
        for step in steps:
            self.assertAlmostEqual(a[step], b[step], places=4, msg=f"step {step}")

    def test_two_process_ddp_matches_single_process_with_the_same_global_batch(self):
        single_exp = self.train_single_process()
        ddp = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "plugins/tidal/Main.py",
                         "--config", self.write_config(BATCH_SIZE=4, DESIRED_BATCH_SIZE=8),
                         "--max-steps", str(self.STEPS), env={**self.env, "OMP_NUM_THREADS": "1"}, timeout=300)
        self.assertEqual(ddp.returncode, 0, ddp.stderr[-3000:])
        (ddp_exp,) = [e for e in self.experiments() if e != single_exp]  # rank 0 alone created a directory
        self.assert_same_losses(single_exp, ddp_exp)

    def test_two_nodes_with_c10d_rendezvous_match_single_process_with_the_same_global_batch(self):
        # Two torchrun invocations as on two machines of a cluster (here both on loopback), one process each, meeting
        # through the c10d rendezvous; they share the experiments directory as cluster nodes share a filesystem.
        # c10d ignores --node-rank (torchrun warns so): it ranks the nodes by (host name, pid), so either invocation
        # may hold global rank 0, and the test asserts nothing about which.
        single_exp = self.train_single_process()
        config = self.write_config(BATCH_SIZE=4, DESIRED_BATCH_SIZE=8)
        rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", f"tidal-test-{uuid.uuid4().hex[:12]}"]
        nodes, logs = [], []
        for node_rank in (0, 1):
            logs.append(self.tmp / f"node{node_rank}.log")
            with open(logs[-1], "wb") as log:
                proc = subprocess.Popen(
                    [PYTHON, "-m", "torch.distributed.run", *rendezvous, "--node-rank", str(node_rank),
                     "plugins/tidal/Main.py", "--config", config, "--max-steps", str(self.STEPS)],
                    cwd=PROJECT_ROOT, env={**os.environ, **self.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)  # its own process group: a kill reaches torchrun's workers too
            nodes.append(proc)
            self.addCleanup(kill_process_group, proc)
        # A node that fails leaves the other waiting at a collective or the rendezvous: stop both at the first failure.
        deadline = time.monotonic() + 300
        while any(p.poll() is None for p in nodes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in nodes):
                break
            time.sleep(0.1)
        codes = [p.poll() for p in nodes]
        for proc in nodes:
            kill_process_group(proc)
        if codes != [0, 0]:
            self.fail(f"the two nodes exited {codes} (None: killed after 300 s or after the other failed)\n" +
                      "\n".join(f"--- node {rank} output, last 3000 characters:\n{tail(log)}"
                                for rank, log in enumerate(logs)))
        created = [e for e in self.experiments() if e != single_exp]
        self.assertEqual(len(created), 1, f"global rank 0 alone creates the experiment directory: {created}")
        dist_exp = created[0]
        self.assert_same_losses(single_exp, dist_exp)
        for name in ("transformer-lm_v1.0.0.pth", "training_state.pth", "evaluation_results.json"):
            self.assertTrue((dist_exp / name).is_file(), name)


if __name__ == "__main__":
    unittest.main()
