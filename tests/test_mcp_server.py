"""The MCP server (dashboard/mcp): tools, schemas and annotations, every tool against a real dashboard on a real Redis
with a real tiny experiment, readable tool errors (dashboard down, 404, 401, 409, 422, 429), and one stdio round trip
through `python -m dashboard.mcp` in a subprocess."""
from __future__ import annotations

import json
import os
import unittest

import httpx

from core.testing import slow
from dashboard.mcp import TidalAPI, build_server
from tests.browser import study_results, write_rl_experiment
from tests.support import (
    DASHBOARD_TOKEN,
    PROJECT_ROOT,
    PYTHON,
    LiveDashboardTestCase,
    auth_headers,
    free_port,
    mcp_call,
    mcp_text,
    run_mcp,
    write_tiny_experiment,
)

try:
    from plugins.tidal.Generator import load_generator  # noqa: F401
    HAVE_GENERATOR = True
except ImportError:
    HAVE_GENERATOR = False

DONE = "20260101-120000-commit_nogit-config_0123456789"
RUNNING = "20260102-120000-commit_nogit-config_0123456789"
CKPT = f"experiments/{DONE}/transformer-lm_v1.0.0.pth"
READ_TOOLS = {"list_experiments", "get_metrics", "get_rl_metrics", "get_status", "get_checkpoints", "get_evaluation",
              "get_ablation", "list_plugins", "get_plugin_manifest", "get_config", "get_jobs", "get_job_logs"}
DESTRUCTIVE_TOOLS = {"create_job", "signal_job", "cancel_job"}
WRITE_TOOLS = {"set_experiment_info"}
COMPUTE_TOOLS = {"generate_text", "analyze_trajectories"}


class DashboardTestCase(LiveDashboardTestCase):
    """One real Redis and one real dashboard per class, over an experiments dir holding DONE (completed, with a tiny
    checkpoint) and RUNNING (still training). Jobs are created with the remote provider: no worker is spawned."""

    settings_overrides: dict = {}

    @classmethod
    def setUpClass(cls):
        cls.settings_overrides = {"default_provider": "remote", **cls.settings_overrides}
        super().setUpClass()

    @classmethod
    def populate(cls, root):
        write_tiny_experiment(root, DONE, steps=300, status="completed", checkpoint=HAVE_GENERATOR)
        write_tiny_experiment(root, RUNNING, steps=20, status="training")

    def mcp(self, token: str | None = DASHBOARD_TOKEN, url: str | None = None):
        return build_server(TidalAPI(url or self.server.url, token))

    def call(self, tool: str, token: str | None = DASHBOARD_TOKEN, url: str | None = None, **arguments):
        """A successful call's structured result (the test fails with the tool's message otherwise)."""
        result = mcp_call(self.mcp(token, url), tool, arguments)
        self.assertFalse(result.is_error, mcp_text(result))
        return result.structured_content

    def error(self, tool: str, token: str | None = DASHBOARD_TOKEN, url: str | None = None, **arguments) -> str:
        """A failing call's message (the test fails if the call succeeded)."""
        result = mcp_call(self.mcp(token, url), tool, arguments)
        self.assertTrue(result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}")
        return mcp_text(result)


class ToolListTest(DashboardTestCase):
    def test_tools_have_names_schemas_descriptions_and_annotations(self):
        tools = {t.name: t for t in run_mcp(self.mcp(), lambda c: c.list_tools()).tools}
        self.assertEqual(set(tools), READ_TOOLS | DESTRUCTIVE_TOOLS | COMPUTE_TOOLS | WRITE_TOOLS)
        for name, tool in tools.items():
            self.assertGreater(len(tool.description or ""), 40, name)          # tells an assistant when to use it
            self.assertEqual(tool.input_schema["type"], "object", name)
            self.assertIsNotNone(tool.output_schema, name)                      # structured results
        for name in READ_TOOLS:
            self.assertTrue(tools[name].annotations.read_only_hint, name)
        for name in DESTRUCTIVE_TOOLS:
            a = tools[name].annotations
            self.assertEqual((a.read_only_hint, a.destructive_hint), (False, True), name)
        for name in WRITE_TOOLS:
            a = tools[name].annotations
            self.assertEqual((a.read_only_hint, a.destructive_hint, a.idempotent_hint), (False, False, True), name)
        for name in COMPUTE_TOOLS:
            a = tools[name].annotations
            self.assertEqual((a.read_only_hint, a.destructive_hint, a.idempotent_hint), (False, False, False), name)
        metrics = tools["get_metrics"].input_schema["properties"]
        self.assertEqual((metrics["max_points"]["default"], metrics["max_points"]["maximum"]), (50, 2000))
        for name in ("list_experiments", "get_metrics", "get_rl_metrics", "get_ablation", "get_job_logs"):
            self.assertEqual(tools[name].input_schema["properties"]["max_bytes"]["default"], 4000, name)
        self.assertEqual(set(metrics["mode"]["enum"]), {"recent", "historical"})
        self.assertEqual(tools["get_metrics"].input_schema["required"], ["experiment_id"])
        logs = tools["get_job_logs"].input_schema["properties"]
        self.assertEqual((logs["offset"]["minimum"], logs["limit"]["maximum"]), (0, 1000))
        self.assertEqual(set(tools["signal_job"].input_schema["properties"]["signal"]["enum"]), {"complete", "stop"})

    def test_arguments_outside_the_bounds_are_refused_before_any_request(self):
        message = self.error("get_metrics", url=f"http://127.0.0.1:{free_port()}", experiment_id=DONE,
                             max_points=5000)
        self.assertIn("max_points", message)
        self.assertNotIn("not reachable", message)


@slow
class ReadToolsTest(DashboardTestCase):
    def test_list_experiments(self):
        experiments = {e["id"]: e for e in self.call("list_experiments")["experiments"]}
        self.assertEqual((experiments[DONE]["status"], experiments[RUNNING]["status"]), ("completed", "training"))
        self.assertEqual(experiments[DONE]["type"], "lm")

    def test_get_metrics_is_bounded_and_filtered(self):
        body = self.call("get_metrics", experiment_id=DONE, max_points=20, keys=["Losses/Total"])
        self.assertEqual((body["originalCount"], body["downsampled"], body["maxPoints"]), (300, True, 20))
        self.assertLessEqual(len(body["points"]), 20)
        self.assertEqual(body["points"][-1]["step"], 299)                       # the last point is kept
        self.assertTrue(all("Learning Rate" not in p for p in body["points"]))
        default = self.call("get_metrics", experiment_id=DONE)
        self.assertEqual(default["maxPoints"], 50)
        recent = self.call("get_metrics", experiment_id=DONE, mode="recent", window=5)
        self.assertEqual([p["step"] for p in recent["points"]], [295, 296, 297, 298, 299])

    def test_status_checkpoints_results_and_rl_metrics(self):
        self.assertEqual(self.call("get_status", experiment_id=DONE)["status"]["status"], "completed")
        self.assertEqual(self.call("get_status", experiment_id=RUNNING)["status"]["status"], "training")
        checkpoints = self.call("get_checkpoints", experiment_id=DONE)["checkpoints"]
        if HAVE_GENERATOR:
            self.assertEqual([(c["path"], c["phase"]) for c in checkpoints], [(CKPT, "final")])
        self.assertEqual(self.call("get_evaluation", experiment_id=DONE), {"experimentId": DONE, "results": None})
        none = self.call("get_ablation", experiment_id=DONE)
        self.assertEqual((none["experimentId"], none["format"], none["verdict"]), (DONE, None, None))
        self.assertEqual(self.call("get_rl_metrics", experiment_id=DONE),
                         {"experimentId": DONE, "metrics": None, "historyLength": None})

    def test_plugins_manifest_and_configs(self):
        plugins = self.call("list_plugins")["plugins"]
        self.assertEqual([p["name"] for p in plugins], ["tidal"])
        self.assertIn("lm-training", [p["id"] for p in plugins[0]["trainingPhases"]])
        manifest = self.call("get_plugin_manifest")
        self.assertEqual(manifest["name"], "tidal")
        self.assertIn("generation", manifest)
        files = self.call("get_config")["files"]
        self.assertIn("base_config.yaml", files)
        config = self.call("get_config", filename="base_config.yaml")
        self.assertIn("EMBED_DIM", config["content"])

    def test_not_found_answers_say_what_was_missing(self):
        message = self.error("get_status", experiment_id="20990101-000000-commit_nogit-config_ffffffffff")
        self.assertIn("not found", message)
        self.assertIn("20990101-000000", message)
        self.assertIn("not found", self.error("get_plugin_manifest", plugin="nope"))
        self.assertIn("not found", self.error("get_config", filename="missing.yaml"))
        self.assertIn("not found", self.error("get_jobs", job_id="job-doesnotexist"))

    def test_bad_arguments_are_readable_tool_errors(self):
        """Wrong types, missing or unknown arguments, traversal and control characters: a tool error naming the
        problem (checked by the tool's schema, or by the dashboard through an escaped path), never a crash."""
        cases = [("get_metrics", {"experiment_id": DONE, "max_points": "many"}, "max_points"),
                 ("get_metrics", {"experiment_id": DONE, "mode": "all"}, "mode"),
                 ("get_metrics", {}, "experiment_id"),
                 ("get_job_logs", {"job_id": "job-x", "offset": -1}, "offset"),
                 ("signal_job", {"job_id": "job-x", "signal": "kill"}, "signal"),
                 # an escaped "/" keeps a traversal inside one path segment: no route matches it
                 ("get_status", {"experiment_id": "../../etc/passwd"}, "not found"),
                 ("get_status", {"experiment_id": f"{DONE}/../{RUNNING}"}, "not found"),
                 ("get_status", {"experiment_id": "..\x00"}, "invalid experiment id"),
                 ("get_jobs", {"job_id": "job-x/../../experiments"}, "not found"),
                 ("get_jobs", {"job_id": "job x;id"}, "invalid job id"),
                 ("get_config", {"filename": "../manifest.yaml"}, "config"),
                 ("create_job", {"type": "lm-training", "config_path": "../../etc/passwd"}, "configPath"),
                 ("create_job", {"type": "lm-training", "config_path": "configs/base_config.yaml;id"}, "configPath"),
                 ("generate_text", {"checkpoint": CKPT, "prompt": "x", "max_tokens": 10**12}, "max_tokens"),
                 ("generate_text", {"checkpoint": "/etc/passwd", "prompt": "x"}, "checkpoint")]
        for tool, arguments, fragment in cases:
            with self.subTest(tool=tool, arguments=arguments):
                message = self.error(tool, **arguments)
                self.assertIn(fragment, message)
                self.assertNotIn("Traceback", message)
        result = mcp_call(self.mcp(), "no_such_tool", {})
        self.assertTrue(result.is_error)
        self.assertIn("no_such_tool", mcp_text(result))

    def test_an_unreachable_dashboard_is_named(self):
        url = f"http://127.0.0.1:{free_port()}"
        message = self.error("list_experiments", url=url)
        self.assertIn(f"the Tidal dashboard at {url} is not reachable", message)


WIDE = "20260103-120000-commit_nogit-config_0123456789"
STUDY = "20260104-120000-commit_nogit-config_0123456789-rl_abcdef0123"
OLD_STUDY = "20260105-120000-commit_nogit-config_0123456789-rl_abcdef0123"
BUDGET = 4000


@slow
class SizedAnswersTest(DashboardTestCase):
    """Answers sized for an assistant: a few KB by default, with parameters to ask for more."""

    @classmethod
    def populate(cls, root):
        super().populate(root)
        from MetricsLogger import MetricsLogger

        exp_dir = root / WIDE
        exp_dir.mkdir()
        (exp_dir / "metadata.json").write_text(json.dumps({"type": "lm", "created_at": 5.0}))
        logger = MetricsLogger(exp_dir, redis_url="", system_interval_s=None)
        for step in range(500):
            logger.log_metrics({f"Metric/{i:02d}": 1.0 / (step + 1 + i) for i in range(30)}, step)
        logger.finalize("completed")
        write_rl_experiment(root, STUDY, source=DONE)
        write_rl_experiment(root, OLD_STUDY, source=DONE, ablation="old")
        (root / STUDY / "rl_metrics").mkdir()
        history = {f"series_{i}": [j / 7 for j in range(2000)] for i in range(12)}
        (root / STUDY / "rl_metrics" / "rl_training_metrics.json").write_text(json.dumps(history))

    def size(self, body) -> int:
        return len(json.dumps(body))

    def test_default_answers_fit_a_few_kilobytes(self):
        for tool, arguments in [("list_experiments", {}), ("get_metrics", {"experiment_id": WIDE}),
                                ("get_rl_metrics", {"experiment_id": STUDY}),
                                ("get_ablation", {"experiment_id": STUDY})]:
            with self.subTest(tool=tool):
                self.assertLessEqual(self.size(self.call(tool, **arguments)), BUDGET)

    def test_a_trimmed_metrics_answer_keeps_the_last_point_and_says_how_to_get_more(self):
        body = self.call("get_metrics", experiment_id=WIDE)
        self.assertIn("max_bytes", body["trimmed"]["hint"])
        self.assertEqual(body["points"][-1]["step"], 499)
        self.assertEqual(len(body["keys"]), 30)                                  # every key is still named
        more = self.call("get_metrics", experiment_id=WIDE, max_points=100, max_bytes=400_000)
        self.assertNotIn("trimmed", more)
        self.assertGreater(len(more["points"]), len(body["points"]))
        few = self.call("get_metrics", experiment_id=WIDE, keys=["Metric/03"], max_points=20)
        self.assertNotIn("trimmed", few)
        self.assertAlmostEqual(few["points"][-1]["Metric/03"], 1.0 / 503, delta=1e-4 / 503)  # 4+ significant digits

    def test_rl_metrics_are_bounded_to_the_last_values(self):
        body = self.call("get_rl_metrics", experiment_id=STUDY)
        self.assertAlmostEqual(body["metrics"]["series_0"], 1999 / 7, places=1)  # the last value, not the history
        self.assertEqual(body["historyLength"], 2000)
        last = self.call("get_rl_metrics", experiment_id=STUDY, last_n=3, keys=["series_1"])
        self.assertEqual(list(last["metrics"]), ["series_1"])
        self.assertEqual(len(last["metrics"]["series_1"]), 3)

    def test_get_ablation_summarises_the_study(self):
        body = self.call("get_ablation", experiment_id=STUDY)
        expected = study_results()
        self.assertEqual(body["verdict"]["verdict"], "no significant difference")
        self.assertEqual((body["verdict"]["gap"], body["verdict"]["ci"], body["verdict"]["best_family"]),
                         (-0.012, [-0.041, 0.017], "min_p"))
        self.assertEqual(set(body["frontiers"]), set(expected["frontier"]))
        temperature = body["frontiers"]["temperature"]
        self.assertLessEqual(len(temperature), 3)
        self.assertEqual((temperature[0], temperature[-1]), (expected["frontier"]["temperature"][0],
                                                             expected["frontier"]["temperature"][-1]))
        self.assertEqual([p["name"] for p in body["learned"]], ["learned (seed 0)", "learned (mean over seeds)"])
        self.assertEqual(body["oracle"]["judge_nll"], 2.55)
        self.assertIsNone(body["human"]["diversity"])
        self.assertIn("nats/token", body["protocol"]["quality_label"])
        full = self.call("get_ablation", experiment_id=STUDY, frontier_points=50, max_bytes=100_000)
        self.assertEqual(full["frontiers"]["temperature"], expected["frontier"]["temperature"])

    def test_old_ablation_results_say_to_rerun_the_study(self):
        body = self.call("get_ablation", experiment_id=OLD_STUDY)
        self.assertIn("rerun", body["note"])
        self.assertIsNone(body["verdict"])

    def test_set_experiment_info_names_and_tags_a_run_for_search(self):
        self.assertIn("TIDAL_API_TOKEN", self.error("set_experiment_info", token=None, experiment_id=WIDE, name="x"))
        body = self.call("set_experiment_info", experiment_id=WIDE, name="thirty metrics", tags=["wide", "synthetic"],
                         notes="made by the test")
        self.assertEqual((body["experiment"]["name"], body["experiment"]["tags"]),
                         ("thirty metrics", ["wide", "synthetic"]))
        found = self.call("list_experiments", search="synthetic")
        self.assertEqual([e["id"] for e in found["experiments"]], [WIDE])
        self.assertEqual(found["total"], 1)
        limited = self.call("list_experiments", limit=2)
        self.assertEqual((len(limited["experiments"]), limited["total"]), (2, 5))

@slow
class JobToolsTest(DashboardTestCase):
    def test_create_signal_cancel_and_logs(self):
        config = {"type": "lm-training", "config_path": "configs/base_config.yaml"}
        self.assertIn("TIDAL_API_TOKEN missing or wrong", self.error("create_job", token=None, **config))
        self.assertIn("TIDAL_API_TOKEN missing or wrong", self.error("create_job", token="wrong-token", **config))
        self.assertEqual(self.http.get("/api/jobs").json()["jobs"], [])          # neither reached the store

        job = self.call("create_job", idempotency_key="mcp-1", **config)["job"]
        self.assertEqual((job["type"], job["status"]), ("lm-training", "provisioning"))
        again = self.call("create_job", idempotency_key="mcp-1", **config)["job"]
        self.assertEqual(again["jobId"], job["jobId"])                           # repeat-safe with the same key
        job_id = job["jobId"]
        self.assertEqual([j["jobId"] for j in self.call("get_jobs")["jobs"]], [job_id])
        self.assertEqual([j["jobId"] for j in self.call("get_jobs", active_only=True)["jobs"]], [job_id])
        self.assertEqual(self.call("get_jobs", job_id=job_id)["job"]["status"], "provisioning")

        self.assertIn("conflict", self.error("signal_job", job_id=job_id, signal="complete"))  # not running yet
        for status in ("starting", "running"):                                   # what a worker would report
            r = self.http.patch(f"/api/workers/{job_id}/status", json={"status": status}, headers=auth_headers())
            self.assertEqual(r.status_code, 200, r.text)
        lines = [{"timestamp": 1.0, "stream": "stdout", "line": f"step {i}"} for i in range(5)]
        r = self.http.post(f"/api/workers/{job_id}/logs", json={"lines": lines}, headers=auth_headers())
        self.assertEqual(r.status_code, 200, r.text)
        logs = self.call("get_job_logs", job_id=job_id, offset=1, limit=2)
        self.assertEqual(([line["line"] for line in logs["lines"]], logs["totalLines"]), (["step 1", "step 2"], 5))

        self.assertIn("TIDAL_API_TOKEN missing or wrong",
                      self.error("signal_job", token="wrong-token", job_id=job_id, signal="complete"))
        self.assertEqual(self.call("signal_job", job_id=job_id, signal="complete")["job"]["status"], "completing")
        self.assertIn("TIDAL_API_TOKEN missing or wrong", self.error("cancel_job", token=None, job_id=job_id))
        self.assertEqual(self.call("cancel_job", job_id=job_id)["job"]["status"], "cancelled")
        self.assertIn("conflict", self.error("cancel_job", job_id=job_id))
        self.assertIn("not found", self.error("cancel_job", job_id="job-none"))

    def test_invalid_fields_are_named(self):
        message = self.error("create_job", type="no-such-phase", config_path="configs/base_config.yaml")
        self.assertIn("no-such-phase", message)

    def test_overrides_reach_the_job_and_unknown_keys_are_named(self):
        # the REST API's `overrides` (as the CLI's --set), through the assistant's tool
        message = self.error("create_job", type="lm-training", config_path="configs/base_config.yaml",
                             overrides={"BATCH_SIZ": 4})
        self.assertIn("BATCH_SIZE", message)                                     # the closest known key
        job = self.call("create_job", type="lm-training", config_path="configs/base_config.yaml",
                        overrides={"BATCH_SIZE": 4})["job"]
        self.assertEqual(job["config"]["overrides"], {"BATCH_SIZE": 4})


@slow
@unittest.skipUnless(HAVE_GENERATOR, "plugins.tidal.Generator.load_generator is not available")
class GenerationToolsTest(DashboardTestCase):
    RL = "20260103-120000-commit_nogit-config_0123456789-rl_0123456789"

    @classmethod
    def populate(cls, root):
        from tests.test_dashboard_generate import make_rl_checkpoint

        super().populate(root)
        make_rl_checkpoint(root, cls.RL, DONE)

    def test_generate_text(self):
        body = self.call("generate_text", checkpoint=CKPT, prompt="Once upon a time", max_tokens=10, seed=7)
        self.assertTrue(body["text"].startswith("Once upon a time"))
        self.assertTrue(0 < body["tokensGenerated"] <= 10)
        self.assertEqual(body["stopReason"], "length")
        gated = self.call("generate_text", checkpoint=CKPT, prompt="Once", max_tokens=10, seed=7,
                          gating_mode="fixed", modulation=0.25)
        self.assertEqual(len(gated["trajectory"]["tokenIds"]), gated["tokensGenerated"])

    def test_generate_text_with_each_decoder(self):
        for arguments, applied in (({"decoder": "mirostat", "tau": 2.5, "eta": 0.2}, {"tau": 2.5, "eta": 0.2}),
                                   ({"decoder": "min_p", "min_p": 0.2}, {"min_p": 0.2}),
                                   ({"decoder": "edt", "edt_t0": 0.9, "edt_theta": 1.5, "edt_n": 0.7},
                                    {"t0": 0.9, "theta": 1.5, "n": 0.7}), ({"decoder": "greedy"}, {})):
            with self.subTest(**arguments):
                body = self.call("generate_text", checkpoint=CKPT, prompt="Once", max_tokens=10, seed=7, **arguments)
                self.assertEqual(body["decoder"]["decoder"], arguments["decoder"])
                for key, value in applied.items():
                    self.assertAlmostEqual(body["decoder"][key], value)
        self.assertIn("mirostat", self.error("generate_text", checkpoint=CKPT, prompt="Once", decoder="beam"))

    def test_generate_text_learned_defaults_to_the_agents_own_lm(self):
        body = self.call("generate_text", prompt="Once", max_tokens=10, seed=7, gating_mode="learned",
                         rl_checkpoint=f"experiments/{self.RL}/rl_checkpoint_final.pth")
        self.assertEqual((body["checkpoint"], body["warnings"]), (CKPT, []))

    def test_out_of_range_parameter_is_a_422_naming_the_field(self):
        message = self.error("generate_text", checkpoint=CKPT, prompt="Once", temperature=5.0)
        self.assertIn("invalid request", message)
        self.assertIn("temperature", message)

    def test_analyze_trajectories(self):
        body = self.call("analyze_trajectories", checkpoint=CKPT, prompts=["Once upon a time"], max_tokens=10,
                         samples_per_prompt=1, bootstrap=False, seed=3)
        self.assertIn("analysis", body)
        self.assertIn("trajectories", body)


@slow
class RateLimitTest(DashboardTestCase):
    settings_overrides = {"rate_capacity": 1}

    def test_429_tells_when_to_retry(self):
        first = self.error("generate_text", checkpoint="experiments/none/missing.pth", prompt="Once")
        self.assertNotIn("rate limited", first)                                  # the one token: a normal error
        message = self.error("generate_text", checkpoint="experiments/none/missing.pth", prompt="Once")
        self.assertRegex(message, r"rate limited by the dashboard: retry after \d+ s")


@slow
class TransportTest(DashboardTestCase):
    def test_python_m_dashboard_mcp_over_stdio(self):
        from mcp import StdioServerParameters

        env = {**os.environ, "TIDAL_API_URL": self.server.url, "TIDAL_API_TOKEN": DASHBOARD_TOKEN,
               "TIDAL_CACHE_DIR": str(self.tmp / "cache"), "OMP_NUM_THREADS": "1"}
        params = StdioServerParameters(command=PYTHON, args=["-m", "dashboard.mcp"], env=env, cwd=str(PROJECT_ROOT))

        async def scenario(client):
            tools = await client.list_tools()
            result = await client.call_tool("list_experiments", {})
            return {t.name for t in tools.tools}, result

        names, result = run_mcp(params, scenario)
        self.assertEqual(len(names), 18)
        self.assertFalse(result.is_error, mcp_text(result))
        self.assertEqual({e["id"] for e in result.structured_content["experiments"]}, {DONE, RUNNING})

    def test_python_m_dashboard_mcp_over_streamable_http(self):
        import subprocess

        from tests.support import wait_for

        port = free_port()
        env = {**os.environ, "TIDAL_API_URL": self.server.url, "TIDAL_CACHE_DIR": str(self.tmp / "cache"),
               "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([PYTHON, "-m", "dashboard.mcp", "--http", "--port", str(port)], env=env,
                                   cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL)
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.terminate)

        def listening():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5) is not None
            except httpx.HTTPError:
                return process.poll() is not None                                # died: stop waiting

        wait_for(listening, timeout=30, message="the MCP HTTP server")
        self.assertIsNone(process.poll(), "python -m dashboard.mcp --http exited")

        async def scenario(client):
            return await client.call_tool("get_status", {"experiment_id": DONE})

        result = run_mcp(f"http://127.0.0.1:{port}/mcp", scenario)
        self.assertFalse(result.is_error, mcp_text(result))
        self.assertEqual(result.structured_content["status"]["status"], "completed")


if __name__ == "__main__":
    unittest.main()
