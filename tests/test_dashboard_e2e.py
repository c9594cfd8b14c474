"""End to end: a real tiny LM training job created through the API, run by the worker (plugins.tidal.Main),
streaming its logs and its metrics (replayed over SSE from the experiment's Redis stream) to completion."""
from __future__ import annotations

import json
import unittest

import httpx
import yaml

from core.testing import slow
from tests.support import (
    PROJECT_ROOT,
    DashboardServer,
    RedisTestCase,
    SSEClient,
    auth_headers,
    dashboard_settings,
    tiny_config,
    wait_for,
)


@slow
@unittest.skipUnless((PROJECT_ROOT / "plugins" / "tidal" / "Main.py").exists(), "plugins/tidal/Main.py not written yet")
class TinyLMJobTest(RedisTestCase):
    def test_a_tiny_lm_job_runs_streams_and_completes(self):
        configs = self.tmp / "configs"
        configs.mkdir()
        config = tiny_config(BUILTIN_NUM_STORIES=60, DATA_CACHE_DIR=str(self.tmp / "data_cache"), EVAL_INTERVAL=2,
                             LOG_INTERVAL=1, EVAL_MAX_NEW_TOKENS=4)
        (configs / "tiny.yaml").write_text(yaml.safe_dump(config))
        settings = dashboard_settings(self.tmp / "experiments", self.redis_url, extra_config_dirs=(configs,),
                                      heartbeat_timeout=60.0, startup_timeout=120.0)
        with DashboardServer(settings) as server, httpx.Client(base_url=server.url, timeout=10) as http:
            r = http.post("/api/jobs", json={"type": "lm-training", "configPath": str(configs / "tiny.yaml"),
                                             "maxSteps": 4}, headers=auth_headers())
            self.assertEqual(r.status_code, 201, r.text)
            job_id = r.json()["job"]["jobId"]

            def job():
                return http.get(f"/api/jobs/{job_id}").json()["job"]

            exp_id = wait_for(lambda: job()["experimentId"], 60, message="experiment id")
            wait_for(lambda: http.get(f"/api/experiments/{exp_id}/status").status_code == 200, 120,
                     message="experiment created")
            stream = SSEClient(f"{server.url}/api/experiments/{exp_id}/stream?lastEventId=0-0")
            self.addCleanup(stream.close)
            events = stream.until(lambda e: e.get("event") == "status"
                                  and json.loads(e["data"])["status"] in ("completed", "failed", "stopped"), 240)
            final = wait_for(lambda: (j := job())["status"] in ("completed", "failed", "cancelled") and j, 60,
                             message="job finished")
            logs = http.get(f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["lines"]
            self.assertEqual(final["status"], "completed",
                             f"{final}\n" + "\n".join(line["line"] for line in logs[-30:]))
            self.assertEqual(final["exitCode"], 0)
            self.assertGreater(len(logs), 0)

            metrics = [json.loads(e["data"]) for e in events if e.get("event") == "metrics"]
            self.assertGreaterEqual(len(metrics), 3)
            self.assertIn("Losses/Total", metrics[0])
            statuses = [json.loads(e["data"])["status"] for e in events if e.get("event") == "status"]
            self.assertEqual(statuses[-1], "completed")
            ids = [e["id"] for e in events if "id" in e]
            self.assertEqual(len(ids), len(set(ids)))

            history = http.get(f"/api/experiments/{exp_id}/metrics").json()
            self.assertEqual(history["originalCount"], len(metrics))
            phases = {c["phase"] for c in http.get(f"/api/experiments/{exp_id}/checkpoints").json()["checkpoints"]}
            self.assertIn("final", phases)
            listed = {e["id"]: e for e in http.get("/api/experiments").json()["experiments"]}
            self.assertEqual((listed[exp_id]["type"], listed[exp_id]["status"]), ("lm", "completed"))


if __name__ == "__main__":
    unittest.main()
