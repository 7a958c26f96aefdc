"""Command expiry (issue #3, CONTRACT.md "Enqueueing ..." and feedback): an expired command is
dead-lettered whole (x-opt-deadletter-reason "expired", x-opt-deadletter-time, x-opt-device-id) and
its feedback `expired` emitted within 1 s of expiry, whether or not the device is connected; an
expired command is never delivered (again). TTL: header ttl or absolute-expiry-time, else
[commands] default_ttl, capped by max_ttl.

Latency is measured from the expiry instant to the feedback's arrival at a service receiver that
is pumped all along; 1.5 s is allowed (1 s plus scheduling). With a header ttl, the expiry instant
is taken as (time the send started + ttl), which can only overstate the latency."""

import time
import unittest

from proton import timestamp

from cmd_helpers import (ANN_DL_REASON, ANN_DL_TIME, CommandsTestCase, command, drop, fb_device, fb_status)
from warden_harness import ACCEPTED, ANN_DEVICE, RELEASED

SLACK = 1.5  # seconds from expiry to feedback receipt


class ExpiryTest(CommandsTestCase):

    def setUp(self):
        super().setUp()
        self.fb = self.reader("feedback")
        self.dl = self.reader("deadletter")

    def send_expiring(self, dev, mid, ttl=None, absolute=None, **kw):
        """Enqueues one command; returns the earliest instant (epoch seconds) it can expire."""
        kw = dict(kw)
        if ttl is not None:
            kw["ttl"] = ttl
        if absolute is not None:
            kw["expiry_time"] = absolute
        t0 = time.time()
        self.enqueue_ok(dev, [mid], **kw)
        return absolute if absolute is not None else t0 + ttl

    def assertExpiredInTime(self, mid, expiry, dev):
        hits = self.fb.wait_for(lambda m: m.correlation_id == mid, 1, timeout=max(0.0, expiry - time.time()) + 4)
        self.assertEqual(len(hits), 1, "no feedback for %s within 4 s of its expiry" % mid)
        m, received = hits[0]
        self.assertEqual(fb_status(m), "expired")
        self.assertEqual(fb_device(m), dev)
        late = received - expiry
        self.assertLessEqual(late, SLACK, "feedback `expired` for %s arrived %.3f s after expiry" % (mid, late))
        self.assertGreaterEqual(late, -0.05, "feedback `expired` for %s arrived %.3f s BEFORE expiry" % (mid, -late))
        t = m.properties.get("time")
        self.assertIsInstance(t, timestamp)
        self.assertGreaterEqual(t / 1000.0, expiry - 0.05, "feedback time is before the expiry")
        return late

    def assertDeadLettered(self, mid, expiry, dev, body=None, properties=None):
        hits = self.dl.wait_for(lambda m: m.id == mid, 1, timeout=3)
        self.assertEqual(len(hits), 1, "expired %s not on deadletter" % mid)
        m = hits[0][0]
        ann = m.annotations or {}
        self.assertEqual(ann.get(ANN_DL_REASON), "expired")
        self.assertEqual(ann.get(ANN_DEVICE), dev, "dead letter's x-opt-device-id is not the target device")
        t = ann.get(ANN_DL_TIME)
        self.assertIsInstance(t, timestamp, "x-opt-deadletter-time not a timestamp: %r" % (t,))
        self.assertTrue(expiry - 0.05 <= t / 1000.0 <= expiry + SLACK + 0.5,
                        "x-opt-deadletter-time %.3f vs expiry %.3f" % (t / 1000.0, expiry))
        if body is not None:
            self.assertEqual(m.body, body, "dead letter is not the whole message")
        if properties is not None:
            self.assertEqual(m.properties, properties)
        return m

    def test_expiry_while_offline(self):
        dev, key = self.device()
        e1 = self.send_expiring(dev, "ttl-1s", ttl=1.0, properties={"p": 1})
        e2 = self.send_expiring(dev, "abs-1.5s", absolute=time.time() + 1.5)
        self.send_expiring(dev, "keeper", ttl=60)
        self.assertEqual(self.queue_depth(dev), 3)
        late1 = self.assertExpiredInTime("ttl-1s", e1, dev)
        late2 = self.assertExpiredInTime("abs-1.5s", e2, dev)
        print("offline expiry: feedback %.3f s and %.3f s after expiry" % (late1, late2))
        self.assertDeadLettered("ttl-1s", e1, dev, body=b"body-ttl-1s", properties={"p": 1})
        self.assertDeadLettered("abs-1.5s", e2, dev, body=b"body-abs-1.5s")
        self.assertEqual(self.queue_depth(dev), 1)
        r = self.egress(self.connect(dev, key))
        self.assertEqual([m.id for m in r.receive(1, timeout=5)], ["keeper"])
        self.expect_nothing(r, 0.5)
        self.fb.wait_for(lambda m: m.correlation_id == "keeper", 1, 3)
        self.fb.settle_for(0.2)
        self.assertEqual(sorted((m.correlation_id, fb_status(m)) for m, _ in self.fb.got),
                         [("abs-1.5s", "expired"), ("keeper", "completed"), ("ttl-1s", "expired")])

    def test_expiry_while_connected_but_not_settling(self):
        dev, key = self.device()
        c = self.connect(dev, key)
        r = self.egress(c, credit=10)
        e_rel = self.send_expiring(dev, "held-released", ttl=1.0)
        e_acc = self.send_expiring(dev, "held-accepted", ttl=1.0)
        e_lost = self.send_expiring(dev, "held-lost", ttl=1.0)
        self.assertEqual(r.wait_messages(3, 3.0), 3, "commands not delivered to a connected device")
        held = {m.id: (m, d) for m, d in r.take()}
        self.assertEqual(sorted(held), ["held-accepted", "held-lost", "held-released"])
        # the device sits on them; the service is told when they expire
        for mid, e in (("held-released", e_rel), ("held-accepted", e_acc), ("held-lost", e_lost)):
            self.assertExpiredInTime(mid, e, dev)
            self.assertDeadLettered(mid, e, dev)
        # settling after expiry: released is not delivered again, accepted does not complete it
        r.settle(held["held-released"][1], RELEASED)
        r.settle(held["held-accepted"][1], ACCEPTED)
        self.expect_nothing(r, 1.0, credit=10)
        # a connection lost with the expired one unsettled does not bring it back either
        c.close()
        r2 = self.egress(self.connect(dev, key))
        self.expect_nothing(r2, 1.0, credit=10)
        self.fb.settle_for(0.3)
        self.assertEqual(sorted((m.correlation_id, fb_status(m)) for m, _ in self.fb.got),
                         [("held-accepted", "expired"), ("held-lost", "expired"), ("held-released", "expired")],
                         "one feedback per command, and it is `expired`")
        self.assertEqual(self.queue_depth(dev), 0)

    def test_connected_device_without_credit_never_gets_expired(self):
        dev, key = self.device()
        c = self.connect(dev, key)
        r = self.egress(c)  # no credit
        e = self.send_expiring(dev, "no-credit", ttl=0.8)
        self.assertExpiredInTime("no-credit", e, dev)
        self.expect_nothing(r, 1.0, credit=5)

    def test_many_expire_together(self):
        devs = [self.device() for _ in range(3)]
        t0 = time.time()
        expiry = {}
        for dev, _ in devs:
            out = self.enqueue("devices/%s/commands" % dev,
                               [command("%s-%d" % (dev, i), ttl=1.0) for i in range(10)])
            self.assertEqual(out, [(ACCEPTED, None)] * 10)
            for i in range(10):
                expiry["%s-%d" % (dev, i)] = t0 + 1.0
        # notifications expire too: dead-lettered, but no feedback
        self.assertEqual(self.enqueue("devices/%s/notifications" % devs[0][0], [command("note", ttl=1.0)]),
                         [(ACCEPTED, None)])
        hits = self.fb.wait_for(lambda m: fb_status(m) == "expired", 30, timeout=6)
        self.assertEqual(sorted(m.correlation_id for m, _ in hits), sorted(expiry))
        worst = max(t - expiry[m.correlation_id] for m, t in hits)
        print("30 expiries: worst feedback latency %.3f s" % worst)
        self.assertLessEqual(worst, SLACK, "a feedback `expired` came %.3f s after expiry" % worst)
        self.assertEqual(len(self.dl.wait_for(lambda m: m.id == "note", 1, 3)), 1, "expired notification not dead-lettered")
        self.fb.settle_for(0.3)
        self.assertNotIn("note", [m.correlation_id for m, _ in self.fb.got], "an expired notification gave feedback")
        for dev, _ in devs:
            self.assertEqual(self.queue_depth(dev), 0)


class ExpiryAcrossRestartTest(CommandsTestCase):

    def run_down(self, stop):
        """A command whose expiry passes while warden is stopped: after the restart it is expired
        (feedback and dead letter), promptly, and never delivered."""
        dev, key = self.device()
        ops = self.gw.service_client("ops")
        ttl = 2.0
        try:
            t0 = time.time()
            self.enqueue_ok(dev, ["down"], client=ops, ttl=ttl)
            stop()
        finally:
            drop(ops)
        self.assertLess(time.time(), t0 + ttl - 0.1, "warden took too long to stop; the test needs it down before expiry")
        time.sleep(max(0.0, t0 + ttl + 0.3 - time.time()))
        self.gw.start()
        restarted = time.time()
        fb = self.reader("feedback")
        dl = self.reader("deadletter")
        hits = fb.wait_for(lambda m: m.correlation_id == "down", 1, 3)
        self.assertEqual([fb_status(m) for m, _ in hits], ["expired"],
                         "no feedback `expired` for a command that expired while warden was down")
        self.assertLessEqual(hits[0][1] - restarted, SLACK, "overdue expiry not handled promptly after a restart")
        self.assertEqual(len(dl.wait_for(lambda m: m.id == "down", 1, 3)), 1,
                         "a command that expired while warden was down was not dead-lettered")
        r = self.egress(self.connect(dev, key))
        self.expect_nothing(r, 0.5)

    def test_expired_while_killed(self):
        self.run_down(self.gw.kill9)

    def test_expired_while_stopped(self):
        self.run_down(lambda: self.assertEqual(self.gw.terminate(), 0))


class TtlConfigTest(CommandsTestCase):
    GATEWAY_SECTIONS = {"commands": {"default_ttl": "2", "max_ttl": "3s"}}

    def test_default_ttl_and_cap(self):
        fb = self.reader("feedback")
        dev, _ = self.device()
        t0 = time.time()
        self.enqueue_ok(dev, ["default"])
        self.enqueue_ok(dev, ["capped-ttl"], ttl=3600)
        self.enqueue_ok(dev, ["capped-abs"], expiry_time=time.time() + 3600)
        self.enqueue_ok(dev, ["short"], ttl=1.0)
        hits = fb.wait_for(lambda m: True, 4, 7)
        at = {m.correlation_id: (fb_status(m), t - t0) for m, t in hits}
        self.assertEqual(sorted(at), ["capped-abs", "capped-ttl", "default", "short"], at)
        for mid, (status, _) in at.items():
            self.assertEqual(status, "expired", mid)
        for mid, lo, hi in (("short", 1.0, 1.0 + SLACK), ("default", 2.0, 2.0 + SLACK),
                            ("capped-ttl", 3.0, 3.0 + SLACK), ("capped-abs", 3.0, 3.0 + SLACK)):
            self.assertTrue(lo - 0.05 <= at[mid][1] <= hi + 0.3,
                            "%s expired %.3f s after enqueue, expected %.1f..%.1f" % (mid, at[mid][1], lo, hi))


if __name__ == "__main__":
    unittest.main()
