"""Interoperability with a second, independent AMQP 1.0 stack: rhea (node).

rhea device -> warden -> python-proton service, and python-proton device -> warden -> rhea
service. Skipped when node or node_modules/rhea is missing (run `npm install` here)."""

import base64
import os
import time
import unittest

from warden_harness import (BACKEND_SECRET, ANN_DEVICE, UNAUTHORIZED, WardenTestCase, new_id,
                            random_key, rhea_available, run_rhea, sas_token, telemetry_message)


@unittest.skipUnless(rhea_available(), "node or tests/integration/node_modules/rhea missing (npm install)")
class RheaTest(WardenTestCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def rhea_send(self, dev, key, bodies, tls=True, password=None, address="telemetry", presettled=False):
        msgs = [{"id": mid, "body_b64": base64.b64encode(b).decode(), "properties": {"n": i}}
                for i, (mid, b) in enumerate(bodies.items())]
        return run_rhea("send.js", {
            "connection": self.gw.conn_args(dev, password or sas_token(dev, key), tls=tls),
            "address": address, "messages": msgs, "presettled": presettled, "timeout_ms": 10000})

    def test_rhea_device_over_tls_python_service_reads(self):
        dev, key = self.gw.create_device()
        bodies = {new_id("r"): os.urandom(64), new_id("r"): b"", new_id("r"): bytes(range(256)) * 10}
        res = self.rhea_send(dev, key, bodies)
        self.assertTrue(res["opened"], res)
        self.assertEqual(sorted(res["accepted"]), sorted(bodies), res)
        got = self.read_group(self.gw, new_id("g"), list(bodies))
        by_id = {m.id: m for m in got}
        self.assertEqual(set(by_id), set(bodies))
        for i, (mid, b) in enumerate(bodies.items()):
            m = by_id[mid]
            self.assertEqual(m.body, b)
            self.assertTrue(m.inferred, "rhea's data section came back as an amqp-value")
            self.assertEqual(m.properties, {"n": i})
            self.assertEqual(m.annotations.get(ANN_DEVICE), dev)

    def test_rhea_device_over_plain_tcp_in_dev_mode(self):
        dev, key = self.gw.create_device()
        mid = new_id("r")
        res = self.rhea_send(dev, key, {mid: b"plain"}, tls=False)
        self.assertEqual(res["accepted"], [mid], res)

    def test_rhea_device_cannot_spoof_identity(self):
        dev, key = self.gw.create_device()
        victim, _ = self.gw.create_device()
        mid = new_id("r")
        res = run_rhea("send.js", {
            "connection": self.gw.conn_args(dev, sas_token(dev, key), tls=True), "address": "telemetry",
            "messages": [{"id": mid, "body_b64": "AA==", "annotations": {"x-opt-device-id": victim}}],
            "timeout_ms": 10000})
        self.assertEqual(res["accepted"], [mid], res)
        got = self.read_group(self.gw, new_id("g"), [mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev)

    def test_python_device_rhea_service_reads(self):
        dev, key = self.gw.create_device()
        c = self.device_client(self.gw, dev, key, tls=True)
        ids = [new_id("p") for _ in range(3)]
        bodies = {mid: os.urandom(32) for mid in ids}
        before = int(time.time() * 1000)
        self.send_telemetry(c, [telemetry_message(bodies[mid], msg_id=mid) for mid in ids])
        after = int(time.time() * 1000)
        res = run_rhea("receive.js", {
            "connection": self.gw.conn_args("backend", BACKEND_SECRET, tls=True),
            "address": "telemetry/" + new_id("rg"), "device": dev, "count": 3, "timeout_ms": 10000})
        self.assertIsNone(res["link_error"], res)
        self.assertEqual([m["id"] for m in res["messages"]], ids, res)
        seqs = []
        for m in res["messages"]:
            self.assertEqual(m["body_kind"], "data")
            self.assertEqual(base64.b64decode(m["body_b64"]), bodies[m["id"]])
            ann = m["annotations"]
            self.assertEqual(ann.get("x-opt-device-id"), dev)
            enq = ann.get("x-opt-enqueued-time")
            self.assertIsInstance(enq, dict, "rhea did not decode x-opt-enqueued-time as a timestamp: %r" % (enq,))
            self.assertTrue(before - 1000 <= enq["$timestamp"] <= after + 1000, enq)
            self.assertIsInstance(ann.get("x-opt-sequence-number"), int)
            seqs.append(ann["x-opt-sequence-number"])
        self.assertEqual(seqs, sorted(seqs))

    def test_rhea_wrong_token_refused(self):
        dev, key = self.gw.create_device()
        res = self.rhea_send(dev, key, {new_id("r"): b"x"}, password=sas_token(dev, random_key()))
        self.assertEqual(res["accepted"], [], res)
        err = res["connection_error"] or res["disconnected"] or {}
        self.assertEqual(err.get("condition") if isinstance(err, dict) else None, UNAUTHORIZED, res)

    def test_rhea_forbidden_attaches(self):
        dev, key = self.gw.create_device()
        other, _ = self.gw.create_device()
        res = self.rhea_send(dev, key, {new_id("r"): b"x"}, address="devices/%s/telemetry" % other)
        self.assertEqual(res["accepted"], [], res)
        self.assertEqual((res["link_error"] or {}).get("condition"), UNAUTHORIZED, res)
        res = run_rhea("receive.js", {
            "connection": self.gw.conn_args(dev, sas_token(dev, key), tls=True),
            "address": "telemetry", "count": 1, "timeout_ms": 5000})
        self.assertEqual(res["messages"], [], res)
        self.assertEqual((res["link_error"] or {}).get("condition"), UNAUTHORIZED, res)


if __name__ == "__main__":
    unittest.main()
