"""/api/generate and /api/analyze-trajectories with a tiny real checkpoint: in-process through the model cache
(off the event loop), and forwarded to plugins/tidal/inference_server.py when INFERENCE_URL is set."""
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

from tests.support import (PROJECT_ROOT, DashboardServer, EmbeddedRedis, LiveDashboardTestCase, dashboard_settings,
                           free_port, http_ok, tiny_config, wait_for)

try:
    from plugins.tidal.Generator import load_generator  # noqa: F401
    HAVE_GENERATOR = True
except ImportError:
    HAVE_GENERATOR = False

EXP = "20260101-120000-commit_nogit-config_0123456789"
BAD = "20260101-120001-commit_nogit-config_0123456789"
CKPT = f"experiments/{EXP}/transformer-lm_v1.0.0.pth"


def make_checkpoints(root: Path) -> None:
    import torch

    from plugins.tidal.TransformerLM import TransformerLM

    config = tiny_config()
    torch.manual_seed(0)
    model = TransformerLM(config["VOCAB_SIZE"], config)
    for exp, cfg in ((EXP, config), (BAD, {**config, "EMBED_DIM": 64})):  # BAD: config and weights disagree
        (root / exp).mkdir(parents=True)
        (root / exp / "config.yaml").write_text(yaml.safe_dump(cfg))
        torch.save(model.state_dict(), root / exp / "transformer-lm_v1.0.0.pth")


@unittest.skipUnless(HAVE_GENERATOR, "plugins.tidal.Generator.load_generator is not available")
class GenerateTest(LiveDashboardTestCase):
    @classmethod
    def populate(cls, root):
        make_checkpoints(root)

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
        b = self.generate()
        self.assertEqual(a["text"], b["text"])
        self.assertEqual(self.server.services.generation.cache.loads, 1)

    def test_gated_generation_returns_a_trajectory(self):
        body = self.generate(gatingMode="fixed", modulation=0.25)
        t = body["trajectory"]
        self.assertEqual(len(t["tokenIds"]), body["tokensGenerated"])
        self.assertEqual(len(t["tokenTexts"]), body["tokensGenerated"])
        self.assertEqual(set(t), {"gateSignals", "effects", "tokenIds", "tokenTexts"})

    def test_a_checkpoint_that_does_not_match_its_config_is_a_400(self):
        r = self.http.post("/api/generate", json={"checkpoint": f"experiments/{BAD}/transformer-lm_v1.0.0.pth",
                                                  "prompt": "Hi", "maxTokens": 10})
        self.assertEqual(r.status_code, 400, r.text)
        self.assertNotIn("Traceback", r.text)

    def test_generation_runs_off_the_event_loop(self):
        done = threading.Event()
        threading.Thread(target=lambda: (self.generate(maxTokens=80, seed=1), done.set()), daemon=True).start()
        time.sleep(0.05)
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


@unittest.skipUnless(HAVE_GENERATOR, "plugins.tidal.Generator.load_generator is not available")
class InferenceServerTest(unittest.TestCase):
    def test_the_dashboard_forwards_to_the_inference_server(self):
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
            root = Path(tmp) / "experiments"
            make_checkpoints(root)
            port = free_port()
            env = {**os.environ, "EXPERIMENTS_DIR": str(root)}
            proc = subprocess.Popen([sys.executable, "-m", "plugins.tidal.inference_server", "--port", str(port)],
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
