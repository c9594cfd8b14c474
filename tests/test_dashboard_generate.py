"""/api/generate and /api/analyze-trajectories with a tiny real checkpoint: in-process through the model cache
(off the event loop), and forwarded to dashboard/server/inference_server.py when INFERENCE_URL is set."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import httpx
import yaml

from core.testing import slow
from tests.support import (
    PROJECT_ROOT,
    DashboardServer,
    EmbeddedRedis,
    LiveDashboardTestCase,
    dashboard_settings,
    free_port,
    http_ok,
    tiny_config,
    wait_for,
)

try:
    from plugins.tidal.Generator import load_generator  # noqa: F401
    HAVE_GENERATOR = True
except ImportError:
    HAVE_GENERATOR = False

EXP = "20260101-120000-commit_nogit-config_0123456789"
BAD = "20260101-120001-commit_nogit-config_0123456789"
EOS = "20260101-120002-commit_nogit-config_0123456789"
RL = "20260101-120003-commit_nogit-config_0123456789-rl_0123456789"
CKPT = f"experiments/{EXP}/transformer-lm_v1.0.0.pth"
EOS_CKPT = f"experiments/{EOS}/transformer-lm_v1.0.0.pth"
RL_CKPT = f"experiments/{RL}/rl_checkpoint_final.pth"
RESIDUAL = "20260101-120004-commit_nogit-config_0123456789-rl_0123456789"  # a residual (categorical) agent
RESIDUAL_CKPT = f"experiments/{RESIDUAL}/rl_checkpoint_final.pth"


def make_checkpoints(root: Path) -> None:
    import torch

    from plugins.tidal.DataPipeline import EOT_TOKEN_ID
    from plugins.tidal.TransformerLM import TransformerLM

    config = tiny_config()
    torch.manual_seed(0)
    model = TransformerLM(config["VOCAB_SIZE"], config)
    eos = TransformerLM(config["VOCAB_SIZE"], config)  # always says end-of-text next
    with torch.no_grad():
        eos.output_projection.bias[EOT_TOKEN_ID] = 1e4
    for exp, cfg, lm in ((EXP, config, model), (BAD, {**config, "EMBED_DIM": 64}, model), (EOS, config, eos)):
        (root / exp).mkdir(parents=True)  # BAD: config and weights disagree
        (root / exp / "config.yaml").write_text(yaml.safe_dump(cfg))
        torch.save(lm.state_dict(), root / exp / "transformer-lm_v1.0.0.pth")


def make_rl_checkpoint(root: Path, rl_id: str = RL, lm_id: str = EXP, residual: bool = False) -> None:
    """An RL run `rl_id` whose agent was trained on `lm_id`'s LM, as train_rl saves it: a Beta agent over m, or a
    categorical agent over the residual grid around a dev-chosen base decoder."""
    import torch

    from plugins.tidal.GatingPolicyAgent import create_agent
    from tests.support import rl_config

    config = rl_config(RL_ACTION_MODE="residual", RL_AGENT_TYPE="categorical") if residual else \
        rl_config(RL_ACTION_MODE="modulation", RL_AGENT_TYPE="beta")
    base = {"temperature": 1.0, "min_p": 0.1} if residual else None
    (root / rl_id).mkdir(parents=True)
    torch.save({"agent_state_dict": create_agent(config).state_dict(), "config": config, "action_base": base,
                "lm_checkpoint": str(root / lm_id / "transformer-lm_v1.0.0.pth")},
               root / rl_id / "rl_checkpoint_final.pth")


@unittest.skipUnless(HAVE_GENERATOR, "plugins.tidal.Generator.load_generator is not available")
class GenerateTest(LiveDashboardTestCase):
    @classmethod
    def populate(cls, root):
        make_checkpoints(root)
        make_rl_checkpoint(root)
        make_rl_checkpoint(root, RESIDUAL, residual=True)

    def generate(self, expect=200, **body):
        r = self.http.post("/api/generate", json={"checkpoint": CKPT, "prompt": "Once upon a time", "maxTokens": 10,
                                                  "seed": 7, **body})
        self.assertEqual(r.status_code, expect, r.text)
        return r.json()

    def test_plain_generation_is_seeded_and_cached(self):
        a = self.generate()
        self.assertTrue(a["text"].startswith("Once upon a time"))
        self.assertTrue(0 < a["tokensGenerated"] <= 10)
        self.assertGreater(a["elapsedMs"], 0)
        self.assertNotIn("trajectory", a)
        loads = self.server.services.generation.cache.loads  # other tests of the class may have loaded it first
        b = self.generate()
        self.assertEqual(a["text"], b["text"])
        self.assertEqual(self.server.services.generation.cache.loads, loads)

    def test_gated_generation_returns_a_trajectory(self):
        body = self.generate(gatingMode="fixed", modulation=0.25)
        t = body["trajectory"]
        self.assertEqual(len(t["tokenIds"]), body["tokensGenerated"])
        self.assertEqual(len(t["tokenTexts"]), body["tokensGenerated"])
        self.assertEqual(set(t), {"gateSignals", "effects", "tone", "tokenIds", "tokenTexts"})

    def test_fixed_mode_with_a_residual_agent_takes_an_action_index(self):
        # a residual agent's actions are indices into its grid, not m in [0, 1]: the model code knows the grid's size
        body = self.generate(gatingMode="fixed", modulation=3, rlCheckpoint=RESIDUAL_CKPT)
        self.assertEqual(len(body["trajectory"]["tokenIds"]), body["tokensGenerated"])
        error = self.generate(400, gatingMode="fixed", modulation=999, rlCheckpoint=RESIDUAL_CKPT)["error"]
        self.assertIn("modulation must be an action index in [0, ", error)
        self.assertEqual(self.generate(422, gatingMode="fixed", modulation=3)["detail"][0]["field"],
                         "body.modulation")  # without an agent, m is still checked against the manifest's range

    def test_every_decoder_runs_with_its_parameters(self):
        cases = [({"decoder": "min_p", "minP": 0.2}, {"min_p": 0.2}), ({"decoder": "greedy"}, {"temperature": 0.0}),
                 ({"decoder": "mirostat", "tau": 2.5, "eta": 0.2}, {"tau": 2.5, "eta": 0.2}),
                 ({"decoder": "edt", "edtT0": 0.9, "edtTheta": 1.5, "edtN": 0.7}, {"t0": 0.9, "theta": 1.5, "n": 0.7}),
                 ({"temperature": 1.1, "topK": 7}, {"temperature": 1.1, "top_k": 7})]
        for body, applied in cases:
            with self.subTest(**body):
                decoder = self.generate(**body)["decoder"]
                self.assertEqual(decoder["decoder"], body.get("decoder", "plain"))
                for key, value in applied.items():
                    self.assertAlmostEqual(decoder[key], value)

    def test_an_unknown_decoder_or_a_parameter_it_does_not_take_is_a_422_naming_the_field(self):
        detail = self.generate(422, decoder="beam")["detail"][0]
        self.assertEqual(detail["field"], "body.decoder")
        for name in ("plain", "greedy", "min_p", "mirostat", "edt"):
            self.assertIn(name, detail["message"])
        detail = self.generate(422, decoder="mirostat", topK=5)["detail"][0]
        self.assertEqual(detail["field"], "body.topK")
        self.assertIn("tau", detail["message"])  # says what the decoder does take
        self.assertEqual(self.generate(422, decoder="mirostat", tau=50.0)["detail"][0]["field"], "body.tau")

    def test_gated_modes_refuse_the_sampling_parameters_their_controller_sets(self):
        for body, field in (({"temperature": 0.5}, "body.temperature"), ({"decoder": "min_p"}, "body.decoder"),
                            ({"minP": 0.1}, "body.minP")):
            with self.subTest(**body):
                detail = self.generate(422, gatingMode="fixed", **body)["detail"][0]
                self.assertEqual(detail["field"], field)
                self.assertIn("controller", detail["message"])
        self.assertEqual(self.generate(422, modulation=0.5)["detail"][0]["field"], "body.modulation")

    def test_each_sample_says_why_it_stopped(self):
        stopped = self.generate(checkpoint=EOS_CKPT)
        self.assertEqual((stopped["stopReason"], stopped["tokensGenerated"]), ("eos", 0))
        ran = self.generate()
        self.assertEqual((ran["stopReason"], ran["tokensGenerated"]), ("length", 10))

    def test_learned_mode_defaults_to_the_agents_own_lm(self):
        body = self.http.post("/api/generate", json={"rlCheckpoint": RL_CKPT, "gatingMode": "learned",
                                                     "prompt": "Once", "maxTokens": 10, "seed": 1})
        self.assertEqual(body.status_code, 200, body.text)
        body = body.json()
        self.assertEqual((body["checkpoint"], body["warnings"]), (CKPT, []))
        effects = body["trajectory"]["effects"]  # the parameters the controller set, per token
        self.assertEqual(len(effects), body["tokensGenerated"])
        self.assertIn("min_p", effects[0])

    def test_an_lm_the_agent_was_not_trained_on_is_a_warning(self):
        body = self.generate(checkpoint=EOS_CKPT, rlCheckpoint=RL_CKPT, gatingMode="learned")
        self.assertEqual(body["checkpoint"], EOS_CKPT)
        self.assertEqual(len(body["warnings"]), 1)
        self.assertIn(EXP, body["warnings"][0])
        self.assertIn(EOS, body["warnings"][0])

    def test_only_learned_mode_may_leave_out_the_checkpoint(self):
        r = self.http.post("/api/generate", json={"prompt": "Once", "maxTokens": 10})
        self.assertEqual((r.status_code, r.json()["detail"][0]["field"]), (422, "body.checkpoint"), r.text)

    def test_a_checkpoint_that_does_not_match_its_config_is_a_400(self):
        r = self.http.post("/api/generate", json={"checkpoint": f"experiments/{BAD}/transformer-lm_v1.0.0.pth",
                                                  "prompt": "Hi", "maxTokens": 10})
        self.assertEqual(r.status_code, 400, r.text)
        self.assertNotIn("Traceback", r.text)

    @slow
    def test_generation_runs_off_the_event_loop(self):
        done = threading.Event()
        # the longest generation the API allows: the tiny model's decode loop is fast enough that 80 tokens could be
        # over before the first health check
        threading.Thread(target=lambda: (self.generate(maxTokens=500, seed=1), done.set()), daemon=True).start()
        time.sleep(0.02)
        answered_during = 0
        while not done.is_set():
            if self.http.get("/api/health").status_code == 200 and not done.is_set():
                answered_during += 1
        self.assertGreater(answered_during, 0)

    def test_analyze_trajectories(self):
        r = self.http.post("/api/analyze-trajectories", json={
            "checkpoint": CKPT, "prompts": ["Once upon a time", "The little cat"], "maxTokens": 10,
            "gatingMode": "random", "samplesPerPrompt": 2, "includeExtremeValues": True, "bootstrap": False,
            "seed": 3})
        self.assertEqual(r.status_code, 200, r.text)
        body = r.json()
        self.assertEqual(set(body["trajectories"]), {"Once upon a time", "The little cat"})
        self.assertEqual(len(body["trajectories"]["The little cat"]), 2)
        self.assertIn("cross_prompt", body["analysis"])
        self.assertEqual(set(body["sweepTexts"]), {"0.0", "0.5", "1.0"})


@slow
@unittest.skipUnless(HAVE_GENERATOR, "plugins.tidal.Generator.load_generator is not available")
class InferenceServerTest(unittest.TestCase):
    def test_the_dashboard_forwards_to_the_inference_server(self):
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
            root = Path(tmp) / "experiments"
            make_checkpoints(root)
            port = free_port()
            env = {**os.environ, "EXPERIMENTS_DIR": str(root)}
            proc = subprocess.Popen([sys.executable, "-m", "dashboard.server.inference_server", "--port", str(port)],
                                    cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_for(lambda: http_ok(url + "/health"), 60, message="inference server")
                settings = dashboard_settings(root, redis_server.url, inference_url=url, rate_capacity=10_000)
                with DashboardServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
                    r = http.post("/api/generate", json={"checkpoint": CKPT, "prompt": "Once", "maxTokens": 10,
                                                         "gatingMode": "fixed", "seed": 7})
                    self.assertEqual(r.status_code, 200, r.text)
                    self.assertIn("trajectory", r.json())
                    self.assertEqual(server.services.generation.cache.loads, 0)  # nothing loaded in the dashboard
                    r = http.post("/api/generate", json={"checkpoint": f"experiments/{BAD}/transformer-lm_v1.0.0.pth",
                                                         "prompt": "Once", "maxTokens": 10})
                    self.assertEqual(r.status_code, 400, r.text)  # the inference server's 400 passes through
                self.assertEqual(httpx.get(url + "/health").json()["loads"], 1)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        # an unreachable inference server is a clean 503
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
            root = Path(tmp) / "experiments"
            make_checkpoints(root)
            settings = dashboard_settings(root, redis_server.url, inference_url=f"http://127.0.0.1:{free_port()}")
            with DashboardServer(settings) as server:
                r = httpx.post(server.url + "/api/generate", json={"checkpoint": CKPT, "prompt": "x", "maxTokens": 10})
                self.assertEqual((r.status_code, r.json()["error"]), (503, "the inference server is unreachable"))



if __name__ == "__main__":
    unittest.main()
