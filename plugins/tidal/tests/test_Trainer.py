"""LM training loop: learning, accumulation rules, checkpoints, graceful stop, exact resume, early stopping."""
import unittest

import torch

from core.errors import TidalError
from core.io import read_jsonl
from core.testing import slow
from MetricsLogger import MetricsLogger
from plugins.tidal.tests.support import TempDirTestCase, tiny_config
from plugins.tidal.Trainer import EarlyStopping, Trainer
from plugins.tidal.TransformerLM import TransformerLM, load_model_weights

CPU = torch.device("cpu")


class StopAt(MetricsLogger):
    """The real MetricsLogger (disk only) that asks the trainer to stop once a given step has been logged."""

    def __init__(self, exp_dir, step, kind):
        super().__init__(exp_dir, redis_url=None)
        self.stop_step, self.kind, self.trainer = step, kind, None

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.stop_step and "Losses/Total" in metrics:
            self.trainer.request_stop(self.kind)


class TrainerTestCase(TempDirTestCase):
    def config(self, **overrides):
        return tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), **overrides)

    def train(self, exp_name, config, max_steps=None, stop=None, resume=False):
        exp = self.tmp / exp_name
        exp.mkdir(exist_ok=True)
        metrics = StopAt(exp, *stop) if stop else MetricsLogger(exp, redis_url=None)
        trainer = Trainer(config, exp, CPU, metrics, max_steps=max_steps)
        metrics.trainer = trainer
        final = trainer.run(resume_from=exp if resume else None)
        metrics.close()
        return trainer, final, exp

    @staticmethod
    def losses(exp):
        return {r["step"]: r["Losses/Total"] for r in read_jsonl(exp / "dashboard_metrics" / "metrics.jsonl")
                if "Losses/Total" in r}


class TestTraining(TrainerTestCase):
    @slow
    def test_one_epoch_learns_and_writes_every_checkpoint(self):
        config = self.config(EVAL_INTERVAL=10, BUILTIN_NUM_STORIES=80,
                             LEARNING_RATE_SCHEDULER={"WARMUP_RATIO": 0.1, "BASE_LR": 1e-2, "MIN_LR": 1e-4})
        trainer, final, exp = self.train("run", config)
        records = read_jsonl(exp / "dashboard_metrics" / "metrics.jsonl")
        val = [r["Losses/Validation"] for r in records if "Losses/Validation" in r]
        self.assertGreater(len(val), 2)
        self.assertLess(val[-1], val[0] - 1.0, "validation loss should fall clearly within one epoch")
        self.assertEqual(final.name, "transformer-lm_v1.0.0.pth")
        for name in ("checkpoint_foundational_epoch_1.pth", "training_state.pth", final.name):
            self.assertTrue((exp / name).is_file(), name)
        model = TransformerLM(50257, config)
        load_model_weights(model, exp / "checkpoint_foundational_epoch_1.pth")  # a raw, loadable state_dict
        self.assertFalse(list(exp.glob(".*.tmp")), "no temporary files left behind")

    @slow
    def test_logs_the_documented_metric_keys(self):
        _, _, exp = self.train("run", self.config(), max_steps=6)
        train_record = [r for r in read_jsonl(exp / "dashboard_metrics" / "metrics.jsonl") if "Losses/Total" in r][-1]
        for key in ("Losses/Total", "Learning Rate", "Iterations/Second", "Tokens/Second", "Epoch/Progress",
                    "Perplexity", "ETA/Seconds"):
            self.assertIn(key, train_record)
        self.assertIsInstance(train_record["timestamp"], float)

    def test_gradient_accumulation_must_divide(self):
        with self.assertRaises(TidalError):
            Trainer(self.config(BATCH_SIZE=8, DESIRED_BATCH_SIZE=12), self.tmp, CPU)

    @slow
    def test_accumulation_matches_one_big_batch(self):
        # 2 micro-batches of 4 accumulate to the same update as one batch of 8 (no dropout).
        _, _, a = self.train("a", self.config(BATCH_SIZE=8, DESIRED_BATCH_SIZE=8), max_steps=3)
        _, _, b = self.train("b", self.config(BATCH_SIZE=4, DESIRED_BATCH_SIZE=8), max_steps=3)
        la, lb = self.losses(a), self.losses(b)
        for step in (1, 2, 3):
            self.assertAlmostEqual(la[step], lb[step], places=4)


class TestStopAndResume(TrainerTestCase):
    @slow
    def test_terminate_then_resume_reproduces_the_uninterrupted_run(self):
        config = self.config(DROPOUT=0.1, EVAL_INTERVAL=4)  # dropout: the RNG state must be restored too
        _, _, full = self.train("full", config, max_steps=12)
        _, final, part = self.train("part", config, max_steps=12, stop=(5, "terminate"))
        self.assertIsNone(final)
        self.assertTrue((part / "training_state.pth").is_file())
        self.assertEqual(max(self.losses(part)), 5)
        trainer, final, part = self.train("part", config, max_steps=12, resume=True)
        self.assertEqual(trainer.global_step, 12)
        expected, got = self.losses(full), self.losses(part)
        self.assertEqual(sorted(got), list(range(1, 13)), "every step exactly once: no data seen twice")
        for step in range(1, 13):
            self.assertAlmostEqual(expected[step], got[step], places=5, msg=f"step {step}")

    @staticmethod
    def series(exp, key):
        return {r["step"]: r[key] for r in read_jsonl(exp / "dashboard_metrics" / "metrics.jsonl") if key in r}

    @slow
    def test_resume_keeps_the_horizon_and_schedule_the_run_was_started_with(self):
        # the epoch is much longer than 12 steps: a resume that forgot the horizon would train on to its end
        _, _, full = self.train("full", self.config(), max_steps=12)
        self.train("part", self.config(), max_steps=12, stop=(5, "terminate"))
        trainer, final, part = self.train("part", self.config(), max_steps=None, resume=True)
        self.assertEqual((trainer.global_step, trainer.total_steps), (12, 12))
        self.assertIsNotNone(final)
        expected, got = self.series(full, "Learning Rate"), self.series(part, "Learning Rate")
        self.assertEqual(sorted(got), list(range(1, 13)))
        for step in range(1, 13):
            self.assertAlmostEqual(expected[step], got[step], places=12, msg=f"step {step}")
        progress = list(self.series(part, "Progress").values())
        self.assertEqual(progress, sorted(progress), "progress never goes backwards")
        self.assertEqual(progress[-1], 1.0)

    @slow
    def test_resume_with_a_new_horizon_rebuilds_the_schedule_and_says_so(self):
        from plugins.tidal.DynamicLRScheduler import DynamicLRScheduler

        config = self.config()
        self.train("part", config, max_steps=12, stop=(5, "terminate"))
        trainer, _, part = self.train("part", config, max_steps=20, resume=True)
        self.assertEqual((trainer.global_step, trainer.total_steps), (20, 20))
        schedule = DynamicLRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0), config, 20)
        got = self.series(part, "Learning Rate")
        for step in range(6, 21):  # after the resume, the rate follows a 20-step schedule at the same position
            self.assertAlmostEqual(got[step], schedule.lr_at(step), places=12, msg=f"step {step}")
        self.assertRegex((part / "training.log").read_text(), r"horizon changed from 12 to 20 steps")

    def test_complete_request_finishes_the_step_and_writes_the_final_model(self):
        trainer, final, exp = self.train("run", self.config(), max_steps=50, stop=(3, "complete"))
        self.assertEqual(trainer.global_step, 3)
        self.assertTrue(final.is_file())

    def test_resume_without_state_is_a_clear_error(self):
        exp = self.tmp / "empty"
        exp.mkdir()
        with self.assertRaises(TidalError):
            Trainer(self.config(), exp, CPU, max_steps=2).run(resume_from=exp)


@slow
class TestEarlyStopping(TrainerTestCase):
    def test_rule(self):
        es = EarlyStopping(patience=2, min_delta=0.1)
        self.assertTrue(es.step(5.0))
        self.assertFalse(es.step(4.95))  # improvement smaller than min_delta
        self.assertFalse(es.should_stop)
        self.assertFalse(es.step(4.99))
        self.assertTrue(es.should_stop)
        es2 = EarlyStopping(2, 0.1)
        es2.load_state_dict(es.state_dict())
        self.assertTrue(es2.should_stop)

    def test_training_stops_when_validation_loss_stalls(self):
        # With a zero learning rate the validation loss never improves after the first evaluation.
        config = self.config(PATIENCE=1, EVAL_INTERVAL=3,
                             LEARNING_RATE_SCHEDULER={"WARMUP_RATIO": 0.0, "BASE_LR": 0.0, "MIN_LR": 0.0})
        trainer, final, _ = self.train("run", config, max_steps=50)
        self.assertEqual(trainer.global_step, 6)
        self.assertTrue(final.is_file())


if __name__ == "__main__":
    unittest.main()
