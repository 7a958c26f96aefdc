"""Revocation takes effect at once: disable, delete and key rotation close a device's live
connection with amqp:unauthorized-access within 100 ms of the REST answer; a second
connection of a device closes the first; an expiring token ends its connection.

The live connection is held by clients/hold_connection.py in its own process, which reports
the CLOCK_MONOTONIC time at which it saw the connection close; this process takes the same
clock right after the REST response was read."""

import json
import os
import subprocess
import time
import unittest

from warden_harness import (ACCEPTED, HERE, PYTHON, UNAUTHORIZED, Holder, WardenTestCase, _track, kill_proc,
                            sas_token, telemetry_message)

LIMIT = 0.100  # seconds, from the contract


class RevocationTest(WardenTestCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def hold(self, dev, key=None, token=None, tls=False):
        token = token or sas_token(dev, key)
        if tls:
            h = Holder(self.gw.amqps_url, dev, token, ca=self.gw.server_ca)
        else:
            h = Holder(self.gw.amqp_url, dev, token)
        self.addCleanup(h.stop)
        h.wait_ready()
        return h

    def wait_closed(self, h, timeout=5.0):
        """The connection-level end event reported by the holder (link detaches are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = h.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                break
            if ev["event"] in ("closed", "transport_closed", "eof", "timeout", "ended"):
                return ev
        self.fail("the device's connection was not closed within %.1fs" % timeout)

    def revoke_and_measure(self, op, tls=False, expect_status=(200, 204)):
        dev, key = self.gw.create_device()
        h = self.hold(dev, key, tls=tls)
        r = self.gw.device_op(dev, op)
        t_rest = time.monotonic()
        self.assertIn(r.status, expect_status, r)
        ev = self.wait_closed(h)
        self.assertEqual(ev["event"], "closed",
                         "connection not closed with an AMQP close frame (got %r)" % ev)
        self.assertEqual(ev.get("condition"), UNAUTHORIZED, "close condition: %r" % ev)
        latency = ev["t"] - t_rest
        print("%s: connection closed %.1f ms after the REST response" % (op, latency * 1000))
        self.assertLess(latency, LIMIT, "%s: connection closed %.1f ms after the REST response" % (op, latency * 1000))
        return dev, key, r

    def test_disable_closes_live_connection(self):
        dev, key, _ = self.revoke_and_measure("disable")
        self.assertRefused(lambda: self.gw.device_client(dev, key), "disabled device could reconnect")

    def test_disable_closes_live_tls_connection(self):
        self.revoke_and_measure("disable", tls=True)

    def test_delete_closes_live_connection(self):
        dev, key, _ = self.revoke_and_measure("delete", expect_status=(204,))
        self.assertRefused(lambda: self.gw.device_client(dev, key), "deleted device could reconnect")

    def test_rotate_closes_live_connection(self):
        dev, old_key, r = self.revoke_and_measure("keys/rotate", expect_status=(200, 201))
        new_key = (r.json or {}).get("key")
        self.assertIsInstance(new_key, str, "rotate returned no key: %r" % r)
        self.assertNotEqual(new_key, old_key)
        self.assertRefused(lambda: self.gw.device_client(dev, old_key), "old key still valid after rotation")
        c = self.device_client(self.gw, dev, new_key)
        self.send_telemetry(c, [telemetry_message(b"new key")])

    def test_revoking_under_load(self):
        # another device streams telemetry flat out while one is disabled
        busy, kbusy = self.gw.create_device()
        load = subprocess.Popen([PYTHON, os.path.join(HERE, "clients", "stream_telemetry.py"),
                                 "--url", self.gw.amqp_url, "--user", busy, "--password", sas_token(busy, kbusy),
                                 "--seconds", "4"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        _track(load)
        self.addCleanup(kill_proc, load)
        time.sleep(0.5)  # let the stream get going
        self.assertIsNone(load.poll(), "load generator ended early: %r" % (load.stderr.read(),))
        for _ in range(3):
            self.revoke_and_measure("disable")
        out, err = load.communicate(timeout=20)
        res = json.loads(out.decode().strip().splitlines()[-1])
        print("load during revocations: %r" % res)
        self.assertIsNone(res["condition"], "the busy device was disturbed: %r" % res)
        self.assertGreater(res["accepted"], 100, "the load generator hardly ran: %r" % res)
        self.assertEqual(res["accepted"], res["sent"], res)

    def test_delete_and_recreate_invalidates_old_key(self):
        dev, old_key = self.gw.create_device()
        self.assertEqual(self.gw.device_op(dev, "delete").status, 204)
        _, new_key = self.gw.create_device(dev)
        self.assertNotEqual(new_key, old_key)
        self.assertRefused(lambda: self.gw.device_client(dev, old_key), "a deleted device's key works for its successor")
        self.track(self.gw.device_client(dev, new_key))

    def test_update_that_drops_the_key_revokes_it(self):
        # PUT {"auth": {"key": false, "thumbprint": ...}} turns a key device into a certificate-only
        # device. warden may refuse such an update; if it answers 2xx, the key must stop working at
        # once, the live connection included.
        dev, key = self.gw.create_device()
        h = self.hold(dev, key)
        r = self.gw.rest("PUT", "/v1/devices/" + dev, {"groups": [], "peers": [],
                                                        "auth": {"key": False, "thumbprint": "ab" * 32}})
        t_rest = time.monotonic()
        if 400 <= r.status < 500:
            self.track(self.gw.device_client(dev, key))  # refused update: the key is untouched
            return
        self.assertIn(r.status, (200, 204), r)
        ev = h.next_event(1.0)
        self.assertIsNotNone(ev, "PUT answered %d with auth.key=false, yet the device's key-authenticated "
                                 "connection stayed open" % r.status)
        self.assertEqual(ev.get("condition"), UNAUTHORIZED, ev)
        self.assertLess(ev["t"] - t_rest, LIMIT)
        self.assertRefused(lambda: self.gw.device_client(dev, key),
                           "PUT answered %d with auth.key=false, yet the old key still authenticates" % r.status)

    def test_revocation_is_per_device(self):
        a, ka = self.gw.create_device()
        b, kb = self.gw.create_device()
        ha = self.hold(a, ka)
        hb = self.hold(b, kb)
        r = self.gw.device_op(a, "disable")
        self.assertIn(r.status, (200, 204), r)
        self.assertEqual(self.wait_closed(ha)["event"], "closed")
        ev = hb.next_event(0.5)
        self.assertIsNone(ev, "disabling %s affected %s's connection: %r" % (a, b, ev))
        self.assertIsNone(hb.proc.poll())

    def test_second_connection_closes_the_first(self):
        dev, key = self.gw.create_device()
        h = self.hold(dev, key)
        second = self.device_client(self.gw, dev, key)
        s = self.send_telemetry(second, [telemetry_message(b"second")])
        ev = self.wait_closed(h, timeout=2.0)
        self.assertIn(ev["event"], ("closed", "transport_closed"), ev)
        # the new connection is the one that lives
        time.sleep(0.2)
        self.assertEqual(s.send(telemetry_message(b"second, again")), ACCEPTED)

    def test_connection_closed_when_token_expires(self):
        dev, key = self.gw.create_device()
        se = int(time.time()) + 3
        h = self.hold(dev, token=sas_token(dev, key, expiry=se))
        ev = self.wait_closed(h, timeout=8.0)
        self.assertEqual(ev["event"], "closed", ev)
        self.assertEqual(ev.get("condition"), UNAUTHORIZED, ev)
        self.assertGreaterEqual(ev["wall"], se - 1.0, "closed %.1fs before the token expired" % (se - ev["wall"]))
        self.assertLessEqual(ev["wall"], se + 2.0, "closed %.1fs after the token expired" % (ev["wall"] - se))


if __name__ == "__main__":
    unittest.main()
