import json
import random
import statistics
import subprocess
import sys
import unittest

from core.paths import PROJECT_ROOT
from plugins.tidal.TrajectoryAnalyzer import (
    analyze_batch,
    analyze_trajectory,
    cross_prompt_variance,
    sweep_text_properties,
)


def trajectory(values, nested=True):
    """A trajectory in the lightweight format the generator and the server produce."""
    return {
        "gateSignals": [[m] for m in values] if nested else list(values),
        "effects": [{"temperature": 1.0, "repetition_penalty": 1.2, "top_k": 50, "top_p": 0.9} for _ in values],
        "tokenIds": list(range(len(values))),
        "tokenTexts": [f"tok_{i}" for i in range(len(values))],
    }


def noisy(level, n, seed):
    rng = random.Random(seed)
    return [level + rng.uniform(-0.02, 0.02) for _ in range(n)]


class TestAnalyzeTrajectory(unittest.TestCase):
    def test_summary_statistics_of_a_ramp(self):
        values = [i / 100 for i in range(101)]
        report = analyze_trajectory(trajectory(values))
        self.assertEqual(report["steps"], 101)
        self.assertAlmostEqual(report["mean"], 0.5)
        self.assertAlmostEqual(report["std"], statistics.pstdev(values))
        self.assertEqual((report["min"], report["max"]), (0.0, 1.0))
        self.assertAlmostEqual(report["q1"], 0.25)
        self.assertAlmostEqual(report["median"], 0.5)
        self.assertAlmostEqual(report["q3"], 0.75)
        windows = report["windows"]
        self.assertEqual(len(windows), 4)
        self.assertEqual(windows, sorted(windows))

    def test_flat_gate_signals_are_accepted(self):
        nested = analyze_trajectory(trajectory([0.1, 0.4, 0.9]))
        flat = analyze_trajectory(trajectory([0.1, 0.4, 0.9], nested=False))
        self.assertEqual(nested, flat)

    def test_planted_phase_change_is_found_between_the_middle_windows(self):
        report = analyze_trajectory(trajectory(noisy(0.2, 50, 1) + noisy(0.8, 50, 2)))
        self.assertEqual(len(report["phase_changes"]), 1)
        change = report["phase_changes"][0]
        self.assertEqual((change["from"], change["to"]), (1, 2))
        self.assertGreater(change["t"], 2.0)  # later minus earlier: a rise is positive

    def test_constant_signal_has_no_phase_change(self):
        self.assertEqual(analyze_trajectory(trajectory([0.5] * 40))["phase_changes"], [])

    def test_noise_around_one_level_has_no_phase_change(self):
        self.assertEqual(analyze_trajectory(trajectory(noisy(0.5, 200, 3)))["phase_changes"], [])

    def test_step_between_constant_windows_is_a_change_with_undefined_t(self):
        report = analyze_trajectory(trajectory([0.2] * 20 + [0.9] * 20))
        self.assertEqual(report["phase_changes"], [{"from": 1, "to": 2, "t": None}])

    def test_extremes_list_the_tokens_with_the_highest_and_lowest_m(self):
        report = analyze_trajectory(trajectory([i / 100 for i in range(101)]))
        self.assertEqual([text for text, _ in report["extremes"]["highest"]],
                         ["tok_100", "tok_99", "tok_98", "tok_97", "tok_96"])
        self.assertEqual(report["extremes"]["lowest"][0], ("tok_0", 0.0))
        self.assertEqual(len(report["extremes"]["lowest"]), 5)

    def test_short_trajectories_leave_empty_windows_as_none(self):
        report = analyze_trajectory(trajectory([0.3, 0.6]))
        self.assertEqual(report["windows"], [0.3, 0.6, None, None])
        self.assertEqual(report["phase_changes"], [])

    def test_empty_trajectory_is_an_error(self):
        with self.assertRaises(ValueError):
            analyze_trajectory(trajectory([]))


class TestCrossPromptVariance(unittest.TestCase):
    def test_constant_prompts_have_only_between_prompt_variance(self):
        result = cross_prompt_variance([[trajectory([0.8] * 10), trajectory([0.8] * 30)], [trajectory([0.2] * 20)]],
                                       bootstrap=200)
        # step-weighted: grand mean 0.6; (40 * 0.2**2 + 20 * 0.4**2) / 60 = 0.08
        self.assertAlmostEqual(result["between"], 0.08)
        self.assertEqual(result["within"], 0.0)
        self.assertIsNone(result["ratio"])

    def test_between_plus_within_is_the_total_variance(self):
        prompts = [[trajectory(noisy(level, 30, seed)) for seed in range(3)] for level in (0.2, 0.5, 0.7, 0.9)]
        result = cross_prompt_variance(prompts, bootstrap=300, seed=5)
        everything = [m[0] for trajs in prompts for t in trajs for m in t["gateSignals"]]
        self.assertAlmostEqual(result["between"] + result["within"], statistics.pvariance(everything))
        self.assertAlmostEqual(result["ratio"], result["between"] / result["within"])
        for key in ("between", "within", "ratio"):
            low, high = result["ci95"][key]
            self.assertLessEqual(low, high)
        self.assertLessEqual(result["ci95"]["within"][0], result["within"])
        self.assertGreaterEqual(result["ci95"]["within"][1], result["within"])

    def test_bootstrap_is_reproducible_by_seed(self):
        prompts = [[trajectory(noisy(level, 20, 0))] for level in (0.1, 0.4, 0.6)]
        a = cross_prompt_variance(prompts, bootstrap=100, seed=1)
        self.assertEqual(a, cross_prompt_variance(prompts, bootstrap=100, seed=1))
        self.assertNotEqual(a["ci95"], cross_prompt_variance(prompts, bootstrap=100, seed=2)["ci95"])

    def test_no_bootstrap_gives_no_intervals(self):
        self.assertIsNone(cross_prompt_variance([[trajectory([0.1, 0.2])]], bootstrap=0)["ci95"])


class TestSweep(unittest.TestCase):
    def test_text_properties_are_averaged_per_m(self):
        result = sweep_text_properties({0.0: ["a a b", "c"], 1.0: ["x y z w"]})
        self.assertEqual(result[0.0]["word_count"], 2.0)
        self.assertAlmostEqual(result[0.0]["unique_token_ratio"], (2 / 3 + 1) / 2)
        self.assertEqual(result[0.0]["characters"], 3.0)
        self.assertEqual(result[1.0], {"word_count": 4.0, "unique_token_ratio": 1.0, "characters": 7.0})


class TestAnalyzeBatch(unittest.TestCase):
    def test_report_combines_sections_and_is_strict_json(self):
        report = analyze_batch({"Once upon": [trajectory([0.2] * 10 + [0.9] * 10)], "The cat": [trajectory([0.5] * 8)]},
                               texts_by_m={0.0: ["a b"], 0.5: ["a b c"], 1.0: ["a b c d"]}, bootstrap=50)
        self.assertEqual(set(report), {"per_prompt", "cross_prompt", "sweep"})
        self.assertEqual(len(report["per_prompt"]["Once upon"]), 1)
        self.assertEqual(set(report["sweep"]), {"0.0", "0.5", "1.0"})
        json.dumps(report, allow_nan=False)

    def test_sweep_is_left_out_without_texts(self):
        self.assertNotIn("sweep", analyze_batch({"p": [trajectory([0.4, 0.6])]}, bootstrap=0))

    def test_module_imports_without_torch_or_numpy(self):
        code = ("import sys, plugins.tidal.TrajectoryAnalyzer; "
                "sys.exit(bool({'torch', 'numpy'} & set(sys.modules)))")
        self.assertEqual(subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT).returncode, 0)

if __name__ == "__main__":
    unittest.main()
