"""Bad input never reaches the filesystem or the model and never becomes a 500: confined paths (400), unknown job
types (400 listing the valid ones), oversized bodies (413), invalid fields (422 naming them), unknown ids (404),
odd prompts and broken checkpoint files (a tiny real model)."""
from __future__ import annotations

import json
import os
import socket
import unittest

from core.testing import slow
from tests.support import LiveDashboardTestCase, auth_headers, write_tiny_experiment

EXP = "20260101-120000-commit_nogit-config_0123456789"
MODEL_EXP = "20260101-130000-commit_nogit-config_0123456789"
MODEL_CKPT = f"experiments/{MODEL_EXP}/transformer-lm_v1.0.0.pth"


class BadInputTest(LiveDashboardTestCase):
    @classmethod
    def populate(cls, experiments):
        (experiments / EXP).mkdir()
        (experiments / EXP / "transformer-lm_v1.0.0.pth").write_bytes(b"not really a model")
        (experiments / EXP / "rl_checkpoint_final.pth").write_bytes(b"x")
        outside = cls.tmp / "outside"
        outside.mkdir()
        (outside / "secret.yaml").write_text("SECRET: 1\n")
        (outside / "secret.pth").write_bytes(b"x")
        extra = cls.extra = cls.tmp / "extra_configs"
        extra.mkdir()
        (extra / "ok.yaml").write_text("A: 1\n")
        (extra / "notes.txt").write_text("x")
        os.symlink(outside / "secret.yaml", extra / "link.yaml")
        os.symlink(outside / "secret.pth", experiments / EXP / "escape.pth")
        os.symlink(outside, experiments / "20260101-120001-commit_nogit-config_linkeddir0")
        cls.settings_overrides = {"extra_config_dirs": (extra,)}

    def request(self, method, path, expect, **kwargs):
        r = self.http.request(method, path, **kwargs)
        self.assertEqual(r.status_code, expect, f"{method} {path}: {r.text}")
        self.assertNotIn("Traceback", r.text)
        body = r.json()
        self.assertEqual(set(body), {"error", "detail"}, body)
        return body

    def create(self, expect, **body):
        body = {"type": "lm-training", "configPath": "configs/base_config.yaml", "provider": "remote", **body}
        return self.request("POST", "/api/jobs", expect, json=body, headers=auth_headers())

    # ---- paths
    def test_config_paths_are_confined(self):
        for path in ["../../etc/passwd", "/etc/passwd", "configs/../../../etc/hostname",
                     "plugins/tidal/configs/../../../etc/passwd", str(self.extra / "link.yaml"),
                     "configs/missing.yaml", str(self.extra / "notes.txt"), "configs/\x00.yaml",
                     "plugins/tidal/Utils.py"]:
            with self.subTest(path=path):
                body = self.create(400, configPath=path)
                self.assertEqual(body["detail"]["field"], "configPath")
        job = self.http.post("/api/jobs", json={"type": "lm-training", "configPath": str(self.extra / "ok.yaml"),
                                                "provider": "remote"}, headers=auth_headers()).json()["job"]
        self.assertEqual(job["config"]["configPath"], str(self.extra / "ok.yaml"))
        self.http.post(f"/api/jobs/{job['jobId']}/cancel", headers=auth_headers())

    def test_checkpoint_and_resume_paths_are_confined(self):
        rl = {"type": "rl-training", "rlConfigPath": "configs/rl_config.yaml"}
        for path in ["/etc/passwd", "experiments/../x.pth", f"experiments/{EXP}/missing.pth",
                     f"experiments/{EXP}/escape.pth", f"experiments/{EXP}",
                     "experiments/20260101-120001-commit_nogit-config_linkeddir0/secret.pth",
                     "experiments/.redis/x.pth", f"{self.root}/../outside/secret.pth"]:
            with self.subTest(path=path):
                self.assertEqual(self.create(400, checkpoint=path, **rl)["detail"]["field"], "checkpoint")
        for path in ["experiments/20991231-000000-commit_nogit-config_ffffffffff", "/tmp", "experiments/.."]:
            with self.subTest(path=path):
                self.assertEqual(self.create(400, resumeExpDir=path)["detail"]["field"], "resumeExpDir")

    # ---- job requests
    def test_unknown_job_type_lists_the_valid_ones(self):
        body = self.create(400, type="gan-training")
        self.assertEqual(body["detail"]["validTypes"], ["lm-training", "rl-training"])
        self.assertIn("lm-training", body["error"])

    def test_invalid_fields_are_422_naming_the_field(self):
        cases = [({"timesteps": -1, "type": "rl-training"}, "body.timesteps"),
                 ({"maxSteps": 1.5}, "body.maxSteps"), ({"maxSteps": "5"}, "body.maxSteps"),
                 ({"maxSteps": True}, "body.maxSteps"), ({"provider": "aws"}, "body.provider"),
                 ({"typo": 1}, "body.typo"), ({"type": "rl-training"}, "body.rlConfigPath"),
                 ({"checkpoint": f"experiments/{EXP}/transformer-lm_v1.0.0.pth"}, "body.checkpoint"),
                 ({"configPath": "x" * 2000}, "body.configPath"), ({"configPath": ""}, "body.configPath")]
        for extra, field in cases:
            with self.subTest(field=field, body=extra):
                body = self.create(422, **extra)
                self.assertIn(field, [d["field"] for d in body["detail"]])
        body = self.request("POST", "/api/jobs", 422, content=b'{"type": ', headers={
            **auth_headers(), "Content-Type": "application/json"})
        self.assertEqual(body["detail"][0]["field"], "body")
        self.request("POST", "/api/jobs", 422, json=[1, 2], headers=auth_headers())

    def test_body_size_limit_by_header_and_by_counting(self):
        big = json.dumps({"type": "lm-training", "configPath": "x" * 70_000}).encode()
        body = self.request("POST", "/api/jobs", 413, content=big,
                            headers={**auth_headers(), "Content-Type": "application/json"})
        self.assertEqual(body["detail"]["limitBytes"], 64 * 1024)

        def chunks():  # no Content-Length: the server must count what arrives
            for _ in range(20):
                yield b" " * 8192
        self.request("POST", "/api/generate", 413, content=chunks(), headers={"Content-Type": "application/json"})
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as raw:
            raw.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 999999999\r\n\r\n{}")
            answer = raw.recv(65536).decode()
        self.assertTrue(answer.startswith("HTTP/1.1 413"), answer)

    # ---- generation parameters (bounded by the manifest, before any model work)
    def test_generation_parameters_are_bounded_by_the_manifest(self):
        ckpt = f"experiments/{EXP}/transformer-lm_v1.0.0.pth"
        cases = [({"maxTokens": 5}, "body.maxTokens"), ({"maxTokens": 501}, "body.maxTokens"),
                 ({"temperature": 2.5}, "body.temperature"), ({"temperature": 0.0}, "body.temperature"),
                 ({"topK": 0}, "body.topK"), ({"topK": 201}, "body.topK"), ({"topP": 1.5}, "body.topP"),
                 ({"modulation": 1.2}, "body.modulation"), ({"gatingMode": "greedy"}, "body.gatingMode"),
                 ({"gatingMode": "learned"}, "body.rlCheckpoint"), ({"prompt": ""}, "body.prompt"),
                 ({"checkpoint": f"experiments/{EXP}/rl_checkpoint_final.pth"}, "body.checkpoint"),
                 ({"rlCheckpoint": f"experiments/{EXP}/transformer-lm_v1.0.0.pth"}, "body.rlCheckpoint")]
        for extra, field in cases:
            with self.subTest(field=field, body=extra):
                body = self.request("POST", "/api/generate", 422, json={"checkpoint": ckpt, "prompt": "Once", **extra})
                self.assertEqual(body["detail"][0]["field"], field)
        raw = b'{"checkpoint": "%s", "prompt": "Once", "temperature": NaN}' % ckpt.encode()
        body = self.request("POST", "/api/generate", 422, content=raw, headers={"Content-Type": "application/json"})
        self.assertEqual(body["detail"][0]["field"], "body.temperature")
        body = self.request("POST", "/api/generate", 400, json={"checkpoint": "../../etc/passwd", "prompt": "x"})
        self.assertEqual(body["detail"]["field"], "checkpoint")
        body = self.request("POST", "/api/analyze-trajectories", 422,
                            json={"checkpoint": ckpt, "prompts": ["a"], "gatingMode": "none"})
        self.assertEqual(body["detail"][0]["field"], "body.gatingMode")
        body = self.request("POST", "/api/analyze-trajectories", 422,
                            json={"checkpoint": ckpt, "prompts": ["a"] * 21})
        self.assertEqual(body["detail"][0]["field"], "body.prompts")

    # ---- ids and unknown resources
    def test_unknown_and_invalid_ids(self):
        self.request("GET", "/api/jobs/job-unknown", 404)
        self.request("GET", "/api/jobs/bad$id", 400)
        self.request("GET", "/api/experiments/20991231-000000-commit_nogit-config_ffffffffff/metrics", 404)
        for path in ["/api/experiments/bad..id/status", "/api/experiments/.hidden/checkpoints",
                     "/api/experiments/-x/evaluation"]:
            self.request("GET", path, 400)
        self.request("GET", "/api/plugins/nope", 404)
        self.request("GET", "/api/plugins/tidal/configs/missing.yaml", 404)
        self.request("GET", "/api/plugins/tidal/configs/..%2F..%2FUtils.py", 404)
        self.request("GET", "/api/plugins/tidal/configs/manifest.txt", 400)
        self.request("GET", "/api/no/such/route", 404)
        self.request("DELETE", "/api/jobs", 405)
        self.request("GET", f"/api/experiments/{EXP}/metrics?maxPoints=5", 422)
        self.request("GET", f"/api/experiments/{EXP}/metrics?mode=all", 422)
        self.request("POST", "/api/workers/job-unknown/heartbeat", 404, headers=auth_headers())

    def test_worker_payloads_are_validated(self):
        r = self.http.post("/api/jobs", json={"type": "rl-training", "configPath": "configs/base_config.yaml",
                                              "rlConfigPath": "configs/rl_config.yaml",
                                              "checkpoint": f"experiments/{EXP}/transformer-lm_v1.0.0.pth",
                                              "provider": "remote"}, headers=auth_headers())
        job_id = r.json()["job"]["jobId"]
        try:
            raw = b'{"experimentId": "%s", "records": [{"kind": "metrics", "data": {"x": NaN}}]}' % EXP.encode()
            body = self.request("POST", f"/api/workers/{job_id}/metrics", 422, content=raw,
                                headers={**auth_headers(), "Content-Type": "application/json"})
            self.assertEqual(body["detail"][0]["field"], "body.records.0.data")
            self.request("POST", f"/api/workers/{job_id}/metrics", 400, headers=auth_headers(),
                         json={"experimentId": "../x", "records": []})
            self.request("PATCH", f"/api/workers/{job_id}/status", 422, headers=auth_headers(),
                         json={"status": "exploded"})
            self.request("PATCH", f"/api/workers/{job_id}/status", 409, headers=auth_headers(),
                         json={"status": "completed"})  # provisioning -> completed is not a legal move
        finally:
            self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())


class ModelInputTest(LiveDashboardTestCase):
    """Input that reaches a real (tiny) model: odd prompts generate or are refused cleanly; a checkpoint file that is
    empty, truncated or not a checkpoint is the client's choice of file, so a 400 naming it, never a 500."""

    @classmethod
    def populate(cls, experiments):
        exp = write_tiny_experiment(experiments, MODEL_EXP, steps=1, checkpoint=True)
        weights = (exp / "transformer-lm_v1.0.0.pth").read_bytes()
        (exp / "empty.pth").write_bytes(b"")
        (exp / "truncated.pth").write_bytes(weights[:len(weights) // 2])
        (exp / "garbage.pth").write_bytes(bytes(range(256)) * 8)
        (exp / "header-only.pth").write_bytes(weights[:64])

    def generate(self, **body):
        return self.http.post("/api/generate", json={"checkpoint": MODEL_CKPT, "prompt": "Once", "maxTokens": 10,
                                                     "seed": 0, **body})

    def test_unicode_and_control_characters_in_prompts(self):
        for prompt in ["\x00\x01\x1b[31m\x7f", "line\r\nbreak\ttab", "\u202eevil\u202c", "😀👩‍👩‍👧 e\u0301",
                       "日本語のテキスト", "\ufeff\u200b\u2028", "é" * 4000]:
            with self.subTest(prompt=prompt[:20]):
                r = self.generate(prompt=prompt)
                self.assertEqual(r.status_code, 200, r.text)
                self.assertIsInstance(r.json()["text"], str)
        r = self.generate(prompt=" \t\n")
        self.assertEqual((r.status_code, r.json()["error"]), (400, "the prompt is empty"))
        # a lone surrogate is valid JSON but not text
        r = self.http.post("/api/generate", content=b'{"checkpoint": "%s", "prompt": "\\ud800x", "maxTokens": 10}'
                           % MODEL_CKPT.encode(),
                           headers={"Content-Type": "application/json"})
        self.assertEqual((r.status_code, r.json()["detail"][0]["field"]), (422, "body.prompt"), r.text)

    def test_negative_huge_and_non_finite_parameters_are_422_naming_the_field(self):
        cases = [("maxTokens", 10**30), ("maxTokens", -1), ("maxTokens", 0), ("temperature", -1.0),
                 ("temperature", 1e308), ("topK", -5), ("topP", -0.1), ("topP", 0), ("seed", -1), ("seed", 2**31),
                 ("modulation", -0.5), ("maxTokens", 10.5), ("maxTokens", "10")]
        for field, value in cases:
            with self.subTest(field=field, value=value):
                r = self.generate(**{field: value})
                self.assertEqual(r.status_code, 422, r.text)
                self.assertEqual(r.json()["detail"][0]["field"], f"body.{field}")
        for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
            with self.subTest(literal=literal):
                r = self.http.post("/api/generate", headers={"Content-Type": "application/json"}, content=(
                    b'{"checkpoint": "%s", "prompt": "x", "temperature": %s}' % (MODEL_CKPT.encode(), literal)))
                self.assertEqual(r.status_code, 422, r.text)
                self.assertEqual(r.json()["detail"][0]["field"], "body.temperature")
        r = self.http.post("/api/analyze-trajectories", json={"checkpoint": MODEL_CKPT, "prompts": ["a"],
                                                               "samplesPerPrompt": 10**9})
        self.assertEqual((r.status_code, r.json()["detail"][0]["field"]), (422, "body.samplesPerPrompt"))

    @slow
    def test_broken_checkpoint_files_are_400_naming_the_file(self):
        for name in ("empty.pth", "truncated.pth", "garbage.pth", "header-only.pth"):
            for path in ("/api/generate", "/api/analyze-trajectories"):
                with self.subTest(file=name, route=path):
                    body = {"checkpoint": f"experiments/{MODEL_EXP}/{name}"}
                    body.update({"prompt": "Once"} if path == "/api/generate" else {"prompts": ["Once"]})
                    r = self.http.post(path, json=body)
                    self.assertEqual(r.status_code, 400, r.text)
                    self.assertIn(name, r.json()["error"])
                    self.assertNotIn("Traceback", r.text)


if __name__ == "__main__":
    unittest.main()
