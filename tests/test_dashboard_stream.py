"""SSE over Redis streams: replay by Last-Event-ID (no gap, no duplicate), one shared reader per experiment that
is removed with its last client and re-created, slow clients dropped without slowing others, job events."""
from __future__ import annotations

import json
import socket
import time
import unittest

import httpx

from core.manifest import load_manifest
from core.testing import slow
from tests.support import DashboardServer, RedisTestCase, SSEClient, auth_headers, dashboard_settings, wait_for

KEYS = load_manifest().redis
EXP = "20260101-120000-commit_nogit-config_0123456789"


def data_events(events, kinds=("metrics", "status", "rl-metrics")):
    return [e for e in events if e.get("event") in kinds]


class StreamTestCase(RedisTestCase):
    settings_overrides: dict = {}

    def setUp(self):
        super().setUp()
        (self.tmp / "experiments" / EXP).mkdir(parents=True)
        settings = dashboard_settings(self.tmp / "experiments", self.redis_url, **self.settings_overrides)
        self.server = DashboardServer(settings).start()
        self.addCleanup(self.server.stop)
        self.stream_key = KEYS.metrics_stream(EXP)
        self.url = f"{self.server.url}/api/experiments/{EXP}/stream"

    def add(self, step: int, kind: str = "metrics", **extra) -> str:
        data = {"step": step, "timestamp": time.time(), "Losses/Total": 1.0 / (step + 1), **extra}
        return self.redis.xadd(self.stream_key, {"kind": kind, "data": json.dumps(data)})

    def client(self, **headers) -> SSEClient:
        c = SSEClient(self.url, headers=headers)
        self.addCleanup(c.close)
        self.assertEqual(c.status_code, 200, c.body)
        first = c.next()
        self.assertEqual(first["event"], "heartbeat")  # sent once the subscription is in place
        return c

    def receive(self, client, count, timeout=10.0):
        got = []
        client.until(lambda e: e.get("event") in ("metrics", "status", "rl-metrics") and got.append(e) is None
                     and len(got) >= count, timeout)
        return got


@slow
class ReplayTest(StreamTestCase):
    def test_live_events_carry_stream_ids_and_kinds(self):
        c = self.client()
        ids = [self.add(0), self.add(1, kind="status", status="training"), self.add(2, kind="rl-metrics")]
        got = self.receive(c, 3)
        self.assertEqual([e["id"] for e in got], ids)
        self.assertEqual([e["event"] for e in got], ["metrics", "status", "rl-metrics"])
        self.assertEqual(json.loads(got[0]["data"])["step"], 0)

    def test_reconnect_with_last_event_id_resumes_without_gap_or_duplicate(self):
        before = [self.add(i) for i in range(3)]
        c = self.client()
        live = [self.add(i) for i in range(3, 6)]
        got = self.receive(c, 3)
        self.assertEqual([e["id"] for e in got], live)
        c.close()
        missed = [self.add(i) for i in range(6, 10)]
        resumed = self.client(**{"Last-Event-ID": got[-1]["id"]})
        later = self.add(10)
        got2 = self.receive(resumed, 5)
        self.assertEqual([e["id"] for e in got2], missed + [later])
        resumed.close()
        # the query parameter form (EventSource cannot set headers on a first connection), from the very start
        by_query = SSEClient(f"{self.url}?lastEventId={before[0]}")
        self.addCleanup(by_query.close)
        by_query.next()
        got3 = self.receive(by_query, 10)
        self.assertEqual([e["id"] for e in got3], before[1:] + live + missed + [later])

    def test_writes_racing_with_the_replay_are_delivered_once(self):
        first = self.add(0)
        for i in range(1, 400):
            self.add(i)
        c = self.client(**{"Last-Event-ID": first})
        extra = [self.add(1000 + i) for i in range(50)]  # while the backlog is being sent
        got = self.receive(c, 449, timeout=20)
        ids = [e["id"] for e in got]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(ids[-50:], extra)
        self.assertEqual(sorted(ids, key=lambda i: tuple(map(int, i.split("-")))), ids)

    def test_bad_last_event_id_and_unknown_experiment(self):
        with httpx.Client(base_url=self.server.url) as http:
            r = http.get(f"/api/experiments/{EXP}/stream", headers={"Last-Event-ID": "bogus"})
            self.assertEqual(r.status_code, 400)
            self.assertIn("Last-Event-ID", r.json()["error"])
            self.assertEqual(http.get(f"/api/experiments/{EXP}/stream?lastEventId=1-2-3").status_code, 400)
            r = http.get("/api/experiments/20990101-000000-commit_nogit-config_ffffffffff/stream")
            self.assertEqual((r.status_code, r.json()["error"][:20]), (404, "experiment not found"))
            self.assertEqual(http.get("/api/experiments/..%2F..%2Fetc/stream").status_code, 404)
            self.assertEqual(http.get("/api/experiments/bad..id/stream").status_code, 400)


@slow
class FanOutTest(StreamTestCase):
    def hub(self):
        return self.server.services.hub

    def test_one_shared_reader_for_many_clients_removed_and_recreated(self):
        clients = [self.client() for _ in range(5)]
        self.assertEqual(self.hub().reader_count(self.stream_key), 1)
        self.assertEqual(self.hub().client_count(self.stream_key), 5)
        started = self.hub().readers_started
        entry = self.add(1)
        for c in clients:
            self.assertEqual(self.receive(c, 1)[0]["id"], entry)
        for c in clients:
            c.close()
        wait_for(lambda: self.hub().reader_count(self.stream_key) == 0, message="reader removed")
        again = self.client()
        self.assertEqual(self.hub().reader_count(self.stream_key), 1)
        self.assertEqual(self.hub().readers_started, started + 1)
        entry = self.add(2)
        self.assertEqual(self.receive(again, 1)[0]["id"], entry)

    def test_heartbeats_keep_flowing(self):
        c = self.client()
        beats = c.until(lambda e: e.get("event") == "heartbeat", timeout=5)
        self.assertIn("timestamp", json.loads(beats[-1]["data"]))


@slow
class SlowClientTest(StreamTestCase):
    settings_overrides = {"sse_queue_size": 100, "sse_send_timeout": 2.0}

    def test_a_client_that_stops_reading_is_dropped_and_others_keep_up(self):
        fast = self.client()
        slow = socket.create_connection(("127.0.0.1", self.server.port))
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(f"GET /api/experiments/{EXP}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        hub = self.server.services.hub
        wait_for(lambda: hub.client_count(self.stream_key) == 2, message="slow client subscribed")
        payload = "x" * 20_000
        ids, got = [], []
        for chunk in range(30):  # ~6 MB in all: far more than the slow client's socket buffers hold
            ids += [self.add(chunk * 10 + i, blob=payload) for i in range(10)]
            got += self.receive(fast, 10)  # the fast client keeps up, chunk by chunk
        self.assertEqual([e["id"] for e in got], ids)
        wait_for(lambda: hub.dropped_clients >= 1 and hub.client_count(self.stream_key) == 1, 10,
                 message="slow client dropped")


@slow
class JobStreamTest(StreamTestCase):
    def test_job_updates_and_log_lines_with_replay(self):
        c = SSEClient(f"{self.server.url}/api/jobs/stream")
        self.addCleanup(c.close)
        self.assertEqual(c.next()["event"], "heartbeat")
        with httpx.Client(base_url=self.server.url) as http:
            r = http.post("/api/jobs", json={"type": "lm-training", "configPath": "configs/base_config.yaml",
                                             "provider": "remote"}, headers=auth_headers())
            job_id = r.json()["job"]["jobId"]
            updates = c.until(lambda e: e.get("event") == "job-update"
                              and json.loads(e["data"])["status"] == "provisioning")
            statuses = [json.loads(e["data"])["status"] for e in updates if e.get("event") == "job-update"]
            self.assertEqual(statuses, ["pending", "provisioning"])
            line = {"timestamp": time.time(), "stream": "stdout", "line": "hello"}
            http.post(f"/api/workers/{job_id}/logs", json={"lines": [line]}, headers=auth_headers())
            logs = c.until(lambda e: e.get("event") == "log-lines")[-1]
            self.assertEqual(json.loads(logs["data"]), {"jobId": job_id, "lines": [line]})
            c.close()
            http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        resumed = SSEClient(f"{self.server.url}/api/jobs/stream", headers={"Last-Event-ID": logs["id"]})
        self.addCleanup(resumed.close)
        event = resumed.until(lambda e: e.get("event") == "job-update")[-1]
        self.assertEqual(json.loads(event["data"])["status"], "cancelled")


if __name__ == "__main__":
    unittest.main()
