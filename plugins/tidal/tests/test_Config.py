"""Typed configuration: the models hold exactly the shipped YAML's keys, validate with the loader's messages, and
behave as read-only mappings so code holding plain dicts keeps working."""
import copy
import pickle
import unittest

from pydantic import ValidationError

from core.errors import ConfigError
from plugins.tidal.Config import LMConfig, RLConfig
from plugins.tidal.GatingEnvironment import OBSERVATION_DIM
from plugins.tidal.tests.support import TempDirTestCase, base_config, rl_config
from plugins.tidal.Utils import BASE_CONFIG_PATH, CONFIG_DIR, RL_CONFIG_PATH, load_config, read_yaml, validate_against


def message(model, config) -> str:
    """The ConfigError message of validating `config` (read from c.yaml) into `model`."""
    try:
        model.of(config, source="c.yaml")
    except ConfigError as exc:
        return str(exc)
    raise AssertionError("no ConfigError raised")


class TestSchema(unittest.TestCase):
    def test_the_models_hold_the_reference_configs_keys_in_order(self):
        self.assertEqual(list(LMConfig.model_fields), list(read_yaml(BASE_CONFIG_PATH)))
        self.assertEqual(list(RLConfig.model_fields), list(read_yaml(RL_CONFIG_PATH)))

    def test_every_shipped_config_loads_typed_and_round_trips_to_its_yaml(self):
        for name in ("base_config.yaml", "quickstart_config.yaml"):
            with self.subTest(name=name):
                config = load_config(CONFIG_DIR / name)
                self.assertIsInstance(config, LMConfig)
                self.assertEqual(config.to_dict(), read_yaml(CONFIG_DIR / name))
        for name in ("rl_config.yaml", "rl_quickstart_config.yaml", "rl_cpu_study_config.yaml"):
            with self.subTest(name=name):
                config = load_config(CONFIG_DIR / name, reference_path=RL_CONFIG_PATH)
                self.assertIsInstance(config, RLConfig)
                self.assertEqual(config.to_dict(), read_yaml(CONFIG_DIR / name))
                # the plain dict still passes the loader's generic key/type check against the reference file
                validate_against(config.to_dict(), read_yaml(RL_CONFIG_PATH), name)

    def test_another_reference_file_keeps_the_generic_dict_check(self):
        config = load_config(BASE_CONFIG_PATH, reference_path=CONFIG_DIR / "quickstart_config.yaml")
        self.assertIs(type(config), dict)

    def test_values_are_typed(self):
        config = LMConfig.of(base_config(DROPOUT=0))  # an integer where a number is expected passes, as a float
        self.assertIsInstance(config.DROPOUT, float)
        self.assertIsInstance(config.EMBED_DIM, int)
        self.assertEqual(config.LEARNING_RATE_SCHEDULER.BASE_LR, 1e-3)


class TestMapping(unittest.TestCase):
    def setUp(self):
        self.raw = base_config()
        self.config = LMConfig.of(self.raw)

    def test_reads_like_the_dict_it_came_from(self):
        c = self.config
        self.assertEqual(c["EMBED_DIM"], c.EMBED_DIM)
        self.assertEqual(c["LEARNING_RATE_SCHEDULER"]["BASE_LR"], self.raw["LEARNING_RATE_SCHEDULER"]["BASE_LR"])
        self.assertEqual(c.get("EMBED_DIM"), 256)
        self.assertIsNone(c.get("NOT_A_KEY"))
        self.assertIn("EMBED_DIM", c)
        self.assertNotIn("NOT_A_KEY", c)
        self.assertEqual(list(c), list(self.raw))
        self.assertEqual(list(c.keys()), list(self.raw))
        self.assertEqual(len(c), len(self.raw))
        self.assertEqual(dict(c.items())["SEED"], 42)
        self.assertEqual({**c}["BATCH_SIZE"], self.raw["BATCH_SIZE"])
        self.assertEqual(c, self.raw)
        with self.assertRaises(KeyError):
            c["NOT_A_KEY"]

    def test_is_read_only_and_replace_validates(self):
        with self.assertRaises(ValidationError):  # frozen
            self.config.BATCH_SIZE = 8
        smaller = self.config.replace(BATCH_SIZE=8)
        self.assertEqual((smaller.BATCH_SIZE, self.config.BATCH_SIZE), (8, 64))
        self.assertEqual((self.config | {"MAX_STORIES": 5}).MAX_STORIES, 5)
        with self.assertRaisesRegex(ConfigError, "BATCH_SIZE must be an integer, got string 'eight'"):
            self.config.replace(BATCH_SIZE="eight")
        with self.assertRaisesRegex(ConfigError, "unknown key BATCH_SIZ; did you mean BATCH_SIZE"):
            self.config.replace(BATCH_SIZ=8)

    def test_of_is_the_identity_on_a_model_and_copies_survive(self):
        self.assertIs(LMConfig.of(self.config), self.config)
        self.assertEqual(copy.deepcopy(self.config), self.config)
        self.assertEqual(pickle.loads(pickle.dumps(self.config)), self.config)


class TestMessages(unittest.TestCase):
    """One line naming the key, in `validate_against`'s words where it has words for the case."""

    def test_the_loaders_messages_for_unknown_missing_and_mistyped_keys(self):
        reference = read_yaml(BASE_CONFIG_PATH)
        missing = base_config()
        del missing["PATIENCE"]
        nested = base_config()
        nested["LEARNING_RATE_SCHEDULER"]["BASE_RL"] = 1
        cases = [base_config(EMBED_DIMS=64), missing, base_config(BATCH_SIZE="eight"), base_config(TORCH_COMPILE=1),
                 base_config(LEARNING_RATE_SCHEDULER=3), nested]
        for config in cases:
            with self.subTest(config=[k for k in config if config[k] != reference.get(k)]):
                with self.assertRaises(ConfigError) as expected:
                    validate_against(config, reference, "c.yaml")
                self.assertEqual(message(LMConfig, config), str(expected.exception))
        self.assertEqual(message(LMConfig, base_config(EMBED_DIMS=64)),
                         "c.yaml: unknown key EMBED_DIMS; did you mean EMBED_DIM?")

    def test_enumerations_ranges_and_lists_name_the_key(self):
        cases = [
            (LMConfig, "INFERENCE_WEIGHTS", "fp8",
             "c.yaml: INFERENCE_WEIGHTS must be one of fp32, bf16, eager; got 'fp8'"),
            (LMConfig, "BATCH_SIZE", 0, "c.yaml: BATCH_SIZE must be positive, got 0"),
            (LMConfig, "DROPOUT", 1.5, "c.yaml: DROPOUT must be in [0, 1), got 1.5"),
            (LMConfig, "MAX_STORIES", "all", "c.yaml: MAX_STORIES must be an integer or null, got string 'all'"),
            (LMConfig, "EMBED_DIM", None, "c.yaml: EMBED_DIM must be an integer, got null None"),
            (LMConfig, "ADAM_BETAS", [0.9], "c.yaml: ADAM_BETAS must be a list of 2 values, got [0.9]"),
            (LMConfig, "EVAL_PROMPTS", ["a", 3], "c.yaml: EVAL_PROMPTS must be a list of strings, got list ['a', 3]"),
            (RLConfig, "RL_AGENT_TYPE", "dirichlet",
             "c.yaml: RL_AGENT_TYPE must be one of categorical, beta, gaussian; got 'dirichlet'"),
            (RLConfig, "RL_STUDY_TOP_KS", [3, 0], "c.yaml: RL_STUDY_TOP_KS[1] must be positive, got 0"),
            (RLConfig, "RL_SEEDS", [], "c.yaml: RL_SEEDS must be a list of at least 1 value, got []"),
        ]
        for model, key, value, expected in cases:
            with self.subTest(key=key):
                config = (base_config if model is LMConfig else rl_config)(**{key: value})
                self.assertEqual(message(model, config), expected)

    def test_cross_key_rules(self):
        self.assertEqual(message(LMConfig, base_config(EMBED_DIM=30)),
                         "c.yaml: EMBED_DIM (30) must be divisible by NUM_ATTENTION_HEADS (8)")
        schedule = {"WARMUP_RATIO": 0.1, "BASE_LR": 1e-3, "MIN_LR": 1e-2}
        self.assertEqual(message(LMConfig, base_config(LEARNING_RATE_SCHEDULER=schedule)),
                         "c.yaml: need 0 <= MIN_LR <= BASE_LR, got MIN_LR=0.01, BASE_LR=0.001")

    def test_the_observation_size_is_the_environments(self):
        self.assertEqual(RLConfig.of(rl_config()).RL_OBSERVATION_DIM, OBSERVATION_DIM)
        self.assertEqual(message(RLConfig, rl_config(RL_OBSERVATION_DIM=OBSERVATION_DIM + 1)),
                         f"c.yaml: RL_OBSERVATION_DIM must be {OBSERVATION_DIM} (the observation GatingEnvironment "
                         f"builds), got {OBSERVATION_DIM + 1}")
        self.assertIn("RL_ACTION_DIM must be 1", message(RLConfig, rl_config(RL_ACTION_DIM=2)))


class TestLoader(TempDirTestCase):
    def test_a_typed_error_in_a_file_or_an_override_names_the_file(self):
        path = self.tmp / "bad.yaml"
        path.write_text(RL_CONFIG_PATH.read_text().replace('RL_AGENT_TYPE: "categorical"', 'RL_AGENT_TYPE: "ppo"'))
        with self.assertRaisesRegex(ConfigError, f"^{path}: RL_AGENT_TYPE must be one of"):
            load_config(path, reference_path=RL_CONFIG_PATH)
        with self.assertRaisesRegex(ConfigError, f"^{BASE_CONFIG_PATH}: DROPOUT must be in"):
            load_config(BASE_CONFIG_PATH, ["DROPOUT=2.0"])


if __name__ == "__main__":
    unittest.main()
