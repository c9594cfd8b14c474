"""The decoding study end to end on a tiny model: dev tuning picks each family's frontier, the test replays it,
the learned policy, the oracle and the human continuations are measured with the held-out judge, the verdict and the
results file; the paired design (common random numbers) and the residual base selection."""
import json
import unittest

import numpy as np
import torch

from core.names import ABLATION_FILE
from core.testing import slow
from plugins.tidal.Ablation import (
    Player,
    family_grids,
    format_study_table,
    merge_tuning,
    nearest_on_frontier,
    oracle_check,
    residual_base,
    run_study,
    tune_on_dev,
)
from plugins.tidal.DataPipeline import get_tokenizer
from plugins.tidal.Decoding import ControlledDecoder, PlainDecoder
from plugins.tidal.GatingModulator import RandomGatingPolicy, ResidualActionSpace
from plugins.tidal.Judges import build_judge
from plugins.tidal.RewardComputer import RewardComputer, content_token_mask
from plugins.tidal.StudyData import build_prompt_sets
from plugins.tidal.tests.support import TempDirTestCase, rl_config, tiny_config
from plugins.tidal.TransformerLM import TransformerLM

V = 50257
SMALL_GRIDS = dict(RL_STUDY_TEMPERATURES=[0.5, 1.0], RL_STUDY_GRID_TEMPERATURES=[1.0], RL_STUDY_TOP_PS=[0.8],
                   RL_STUDY_TOP_KS=[20], RL_STUDY_MIN_PS=[0.1, 0.3], RL_STUDY_MIROSTAT_TAU_FACTORS=[1.0],
                   RL_STUDY_EDT_T0S=[1.0], RL_STUDY_EDT_THETAS=[1.0], RL_RESIDUAL_TEMPERATURE_FACTORS=[1.0, 0.7],
                   RL_RESIDUAL_MIN_P_FACTORS=[1.0], RL_RESIDUAL_PENALTIES=[1.0, 1.3], RL_NUM_ACTIONS=4,
                   RL_MAX_EPISODE_LENGTH=6, RL_SAMPLES_PER_PROMPT=2, RL_STUDY_BATCH=8, RL_NUM_ENVS=4,
                   RL_ABLATION_BOOTSTRAP_SAMPLES=50, RL_JUDGE_STORIES=100, RL_STUDY_TEST_POINTS_PER_FAMILY=0)


class StudyCase(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.lm = tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), BUILTIN_NUM_STORIES=60)
        self.rl = rl_config(**SMALL_GRIDS)
        torch.manual_seed(0)
        self.model = TransformerLM(V, self.lm).eval()
        self.sets = build_prompt_sets(self.lm, {"train": 6, "dev": 4, "test": 6}, 16, 24, 6, seed=1)
        self.judges = {role: build_judge(self.lm, role, 100, 4) for role in ("train", "eval")}
        self.reward = RewardComputer(self.rl, self.judges["train"], content_token_mask(get_tokenizer(), V))

    def player(self, space=None) -> Player:
        return Player(self.model, space, self.reward, self.rl, torch.device("cpu"))


class TestPairedDesign(StudyCase):
    def test_a_decoder_replays_identically_and_action_zero_equals_the_base_decoder(self):
        space = ResidualActionSpace(self.rl, {"temperature": 1.0, "min_p": 0.0})
        prompts = self.sets["dev"].prompts
        fixed = self.player(space).play(prompts, 0, lambda: PlainDecoder(1.0, penalty_window=16))
        again = self.player(space).play(prompts, 0, lambda: PlainDecoder(1.0, penalty_window=16))
        base = self.player(space).play(prompts, 0, lambda: ControlledDecoder(space))  # the default action: 0
        self.assertEqual(fixed.tokens, again.tokens)
        self.assertEqual(fixed.tokens, base.tokens)
        self.assertEqual([len(s) for s in fixed.tokens], [2] * len(prompts))  # K samples per prompt
        self.assertNotEqual(fixed.tokens[0][0], fixed.tokens[0][1])  # two streams, two samples


class TestFrontierSelection(unittest.TestCase):
    def test_the_points_replayed_on_test_bracket_the_learned_diversity_and_reach_down(self):
        points = [{"name": f"p{i}", "diversity": d, "judge_nll": n}
                  for i, (d, n) in enumerate([(0.1, 1.0), (0.3, 1.2), (0.5, 1.5), (0.7, 2.0), (0.9, 3.0),
                                              (0.6, 2.5), (0.05, 1.1)])]  # p5 dominated by p3, p6 by p0
        names = lambda div, count: [p["name"] for p in nearest_on_frontier(points, div, count)]  # noqa: E731
        self.assertEqual(names(0.55, 0), ["p6", "p0", "p1", "p2", "p3", "p4"])  # + the least diverse, dominated
        self.assertEqual(names(0.55, 2), ["p6", "p2", "p3"])
        self.assertEqual(names(0.55, 4), ["p6", "p1", "p2", "p3", "p4"])
        self.assertEqual(names(0.65, 3), ["p6", "p2", "p3", "p4"])
        self.assertEqual(names(0.95, 2), ["p6", "p3", "p4"])
        self.assertEqual(names(0.07, 2), ["p6", "p0", "p1"])


@slow
class TestStudy(StudyCase):
    def test_dev_tuning_test_replay_learned_oracle_human_and_the_verdict(self):
        fixed = self.player()
        dev = tune_on_dev(fixed, self.sets["dev"], self.judges["eval"], self.rl, progress=False)
        self.assertNotIn("constant_action", dev["families"])
        self.assertEqual({f: len(p) for f, p in dev["families"].items()},
                         {f: len(g) for f, g in family_grids(self.rl, dev["ce_bits"]).items()})
        base = residual_base(dev["families"])
        best = max(dev["families"]["min_p"], key=lambda p: p["metrics"]["train_reward"])
        self.assertEqual((base["temperature"], base["min_p"]), (best["params"]["temperature"], best["params"]["min_p"]))
        space = ResidualActionSpace(self.rl, base)
        player = self.player(space)
        constants = tune_on_dev(player, self.sets["dev"], self.judges["eval"], self.rl, families=("constant_action",),
                                ce_bits=dev["ce_bits"], progress=False)
        self.assertEqual(len(constants["families"]["constant_action"]), space.num_actions)
        merge_tuning(dev, constants)
        check = oracle_check(player, self.sets["dev"], self.judges["eval"], self.rl, dev)
        self.assertEqual(check["point"]["family"], "oracle")
        self.assertIsNotNone(check["gap"])
        agent = RandomGatingPolicy(0, space.num_actions)
        results = run_study(player, self.sets, self.judges["eval"], self.rl, dev, [("learned (RL seed 0)", agent)],
                            experiment_dir=self.tmp, progress=False,
                            judge_provenance={r: j.provenance for r, j in self.judges.items()})
        on_disk = json.loads((self.tmp / ABLATION_FILE).read_text())
        self.assertEqual(on_disk["verdict"], json.loads(json.dumps(results["verdict"])))
        protocol = results["protocol"]
        self.assertEqual((protocol["test_prompts"], protocol["samples_per_prompt"]), (6, 2))
        self.assertNotEqual(protocol["judge"]["train"]["seed"], protocol["judge"]["eval"]["seed"])
        for family, entry in results["families"].items():
            self.assertTrue(entry["test"], family)  # at least the dev frontier's best point replays on test
            self.assertLessEqual({p["name"] for p in entry["test"]}, {p["name"] for p in entry["dev"]})
        self.assertEqual(len(results["learned"]), 1)
        self.assertEqual(results["oracle"]["family"], "oracle")
        self.assertIsNone(results["human"]["diversity"])  # one true continuation per prompt: no set diversity
        self.assertIn(results["verdict"]["verdict"], ("learned above the frontier", "no significant difference",
                                                      "frontier above learned", "outside the frontier's range"))
        self.assertIsNotNone(results["verdict"]["oracle_gap"])
        table = format_study_table(results)
        self.assertIn("human continuation", table)
        self.assertIn("verdict:", table)
        for point in results["learned"] + [results["oracle"]]:
            self.assertTrue(np.isfinite(point["judge_nll"]))


if __name__ == "__main__":
    unittest.main()
