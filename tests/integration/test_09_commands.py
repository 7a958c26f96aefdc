"""Commands (issue #3): enqueueing by services, delivery to devices in order, every settlement
outcome with its delivery-count and feedback, feedback correlation-id types, queue limits and
the enqueue rejections of CONTRACT.md ("AMQP 1.0 addresses", "Settlement from a device")."""

import json
import time
import unittest
import uuid

from proton import timestamp, ulong

from cmd_helpers import (ANN_DL_REASON, ANN_DL_TIME, INVALID, LIMIT, NOT_FOUND, PRECONDITION, SIZE,
                         UNAUTHORIZED, CommandsTestCase, command, fb_device, fb_status,
                         id_types, modified, settle)
from warden_harness import ACCEPTED, ANN_DEVICE, REJECTED, RELEASED, LinkRefused


class CommandDeliveryTest(CommandsTestCase):

    def test_offline_commands_delivered_in_fifo_order_as_credit_allows(self):
        dev, key = self.device()
        mids = ["fifo-%02d" % i for i in range(10)]
        # mixed routes into one queue: named link, anonymous relay, a notification in between
        self.enqueue_ok(dev, mids[:4])
        anon = self.enqueue(None, [command(mid, body=("body-%s" % mid).encode(), address="devices/%s/commands" % dev,
                                           properties={"n": i + 4}) for i, mid in enumerate(mids[4:7])])
        self.assertEqual([s for s, _ in anon], [ACCEPTED] * 3, anon)
        self.enqueue_ok(dev, mids[7:8], kind="notifications")
        self.enqueue_ok(dev, mids[8:])
        self.assertEqual(self.queue_depth(dev), 10, "REST queueDepth after 10 enqueues while offline")

        c = self.connect(dev, key)
        r = self.egress(c)
        got = []
        for _ in range(4):  # credit 3 at a time: exactly that many arrive, in order
            r.flow(3)
            r.wait_messages(min(3, len(mids) - len(got)), 5.0)
            c.pump(0.2)
            batch = r.take()
            self.assertLessEqual(len(batch), 3, "more deliveries than credit granted")
            for m, d in batch:
                got.append(m)
                r.settle(d, ACCEPTED, pump=False)
            c.pump()
            if len(got) == len(mids):
                break
        self.assertEqual([m.id for m in got], mids, "queue not delivered in FIFO order")
        for m in got:
            self.assertEqual(m.body, ("body-%s" % m.id).encode(), "payload changed")
            self.assertEqual(m.delivery_count, 0, "first delivery of %s has delivery-count %s" % (m.id, m.delivery_count))
        self.assertEqual(got[5].properties, {"n": 5}, "application properties lost")
        self.expect_nothing(r, 0.3)

        # feedback: one `completed` per command, none for the notification
        fb = self.reader("feedback")
        hits = fb.wait_for(lambda m: fb_status(m) == "completed", n=9, timeout=5)
        self.assertEqual(sorted(m.correlation_id for m, _ in hits), sorted(mids[:7] + mids[8:]))
        fb.settle_for(0.3)
        self.assertEqual(len(fb.got), 9, "feedback beyond one per command: %r"
                         % [(m.correlation_id, fb_status(m)) for m, _ in fb.got])
        for m, _ in fb.got:
            self.assertEqual(fb_device(m), dev)
        self.assertEqual(self.queue_depth(dev), 0)

    def test_online_device_gets_command_at_once(self):
        dev, key = self.device()
        c = self.connect(dev, key)
        r = self.egress(c, credit=5)
        c.pump(0.1)
        t0 = time.monotonic()
        self.enqueue_ok(dev, ["live-1"])
        self.assertEqual(r.wait_messages(1, 2.0), 1, "command for a connected device with credit not delivered")
        self.assertLess(time.monotonic() - t0, 2.0)
        [(m, d)] = r.take()
        self.assertEqual((m.id, m.body, m.delivery_count), ("live-1", b"body-live-1", 0))
        r.settle(d, ACCEPTED)

    def test_own_alias_address_and_no_other_devices_queue(self):
        dev, key = self.device()
        other, _ = self.device()
        self.enqueue_ok(dev, ["alias-1"])
        self.enqueue_ok(other, ["theirs-1"])
        c = self.connect(dev, key)
        self.assertAttachRefused(c, "devices/%s/commands" % other, sender=False)
        r = self.egress(c, "devices/%s/commands" % dev)
        got = r.receive(1, timeout=5)
        self.assertEqual([m.id for m in got], ["alias-1"])
        self.expect_nothing(r, 0.3)

    def test_message_id_assigned_when_absent(self):
        dev, key = self.device()
        self.enqueue_ok(dev, [None])
        r = self.egress(self.connect(dev, key))
        [m] = r.receive(1, timeout=5)
        self.assertIsInstance(m.id, str, "assigned message-id is not a string: %r" % (m.id,))
        uuid.UUID(m.id)  # a UUID string
        fb = self.reader("feedback").wait_for(lambda x: True, 1, 5)
        self.assertEqual([x.correlation_id for x, _ in fb], [m.id], "feedback does not carry the assigned id")


class SettlementTest(CommandsTestCase):
    """Each outcome a device can give, with the exact delivery-count and feedback."""

    def one(self, r, timeout=5.0):
        got = self.take(r, 1, timeout)
        self.assertEqual(len(got), 1, "no (re)delivery within %.1fs" % timeout)
        return got[0]

    def feedback(self, mid, n=1, timeout=5.0):
        fb = self.fb.wait_for(lambda m: m.correlation_id == mid, n, timeout)
        return [fb_status(m) for m, _ in fb]

    def setUp(self):
        super().setUp()
        self.fb = self.reader("feedback")
        self.dev, self.key = self.device()
        self.c = self.connect(self.dev, self.key)
        self.r = self.egress(self.c)

    def test_accepted_completes(self):
        self.enqueue_ok(self.dev, ["acc"])
        m, d = self.one(self.r)
        self.r.settle(d, ACCEPTED)
        self.assertEqual(self.feedback("acc"), ["completed"])
        self.expect_nothing(self.r, 0.5)
        self.fb.settle_for(0.2)
        self.assertEqual(len(self.fb.got), 1)

    def test_rejected_ends_without_redelivery(self):
        self.enqueue_ok(self.dev, ["rej", "after-rej"])
        m, d = self.one(self.r)
        self.assertEqual(m.id, "rej")
        self.r.settle(d, REJECTED)
        self.assertEqual(self.feedback("rej"), ["rejected"])
        m, d = self.one(self.r)
        self.assertEqual(m.id, "after-rej", "a rejected command was delivered again")
        self.r.settle(d, ACCEPTED)
        self.expect_nothing(self.r, 0.5)
        # not after a reconnect either
        self.c.close()
        c2 = self.connect(self.dev, self.key)
        self.expect_nothing(self.egress(c2), 0.5)
        self.assertEqual(self.feedback("rej"), ["rejected"])
        self.assertEqual(self.queue_depth(self.dev), 0)

    def test_released_redelivers_with_count_unchanged_failed_raises_it(self):
        self.enqueue_ok(self.dev, ["rel"])
        m, d = self.one(self.r)
        self.assertEqual((m.id, m.delivery_count), ("rel", 0))
        self.r.settle(d, RELEASED)
        m, d = self.one(self.r)
        self.assertEqual((m.id, m.delivery_count), ("rel", 0), "released must not raise delivery-count")
        settle(self.r, d, modified(failed=True))
        m, d = self.one(self.r)
        self.assertEqual((m.id, m.delivery_count), ("rel", 1), "modified delivery-failed must raise delivery-count")
        self.r.settle(d, RELEASED)
        m, d = self.one(self.r)
        self.assertEqual((m.id, m.delivery_count), ("rel", 1), "released after a failure changed delivery-count")
        settle(self.r, d, modified(failed=False))  # modified without flags: like released
        m, d = self.one(self.r)
        self.assertEqual((m.id, m.delivery_count), ("rel", 1), "modified without delivery-failed raised the count")
        self.assertEqual(m.body, b"body-rel")
        self.assertEqual(self.feedback("rel", timeout=0.3), [], "feedback before the command completed")
        self.r.settle(d, ACCEPTED)
        self.assertEqual(self.feedback("rel"), ["completed"])

    def test_modified_undeliverable_here_dead_letters(self):
        dl = self.reader("deadletter")
        self.enqueue_ok(self.dev, ["undel"], properties={"k": "v"}, subject="reboot")
        m, d = self.one(self.r)
        settle(self.r, d, modified(undeliverable=True))
        self.assertEqual(self.feedback("undel"), ["undeliverable"])
        [(x, _)] = dl.wait_for(lambda x: x.id == "undel", 1, 5)
        self.assertEqual(x.body, b"body-undel", "dead letter is not the whole message")
        self.assertEqual(x.properties, {"k": "v"})
        self.assertEqual(x.subject, "reboot")
        ann = x.annotations or {}
        self.assertTrue(ann.get(ANN_DL_REASON), "x-opt-deadletter-reason missing: %r" % ann)
        self.assertIsInstance(ann.get(ANN_DL_TIME), timestamp, "x-opt-deadletter-time not a timestamp: %r" % ann)
        self.assertEqual(ann.get(ANN_DEVICE), self.dev)
        self.expect_nothing(self.r, 0.5)
        self.assertEqual(self.queue_depth(self.dev), 0)

    def test_link_or_connection_lost_redelivers_with_count_raised(self):
        self.enqueue_ok(self.dev, ["lost-1", "lost-2"])
        got = self.take(self.r, 2)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in got], [("lost-1", 0), ("lost-2", 0)])
        self.r.close()  # link detached with both unsettled
        r2 = self.egress(self.c)
        got = self.take(r2, 2)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in got], [("lost-1", 1), ("lost-2", 1)],
                         "after a detach with unsettled deliveries")
        self.c.close()  # connection lost with both unsettled
        c2 = self.connect(self.dev, self.key)
        r3 = self.egress(c2)
        got = self.take(r3, 2)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in got], [("lost-1", 2), ("lost-2", 2)],
                         "after a lost connection with unsettled deliveries")
        for m, d in got:
            r3.settle(d, ACCEPTED)
        self.assertEqual(self.feedback("lost-1"), ["completed"])
        self.assertEqual(self.feedback("lost-2"), ["completed"])

    def test_new_connection_taking_over_redelivers_once(self):
        """A device's second connection closes the first; what the first held comes again, counted once."""
        self.enqueue_ok(self.dev, ["take-1", "take-2"])
        self.assertEqual([m.delivery_count for m, _ in self.take(self.r, 2)], [0, 0])
        c2 = self.connect(self.dev, self.key)
        r2 = self.egress(c2)
        got = self.take(r2, 2)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in got], [("take-1", 1), ("take-2", 1)],
                         "after another connection of the device took over")
        for m, d in got:
            r2.settle(d, ACCEPTED)
        self.assertEqual(self.feedback("take-1"), ["completed"])
        self.assertEqual(self.feedback("take-2"), ["completed"])
        self.expect_nothing(r2, 0.3)

    def test_max_delivery_count_default_10_dead_letters(self):
        dl = self.reader("deadletter")
        self.enqueue_ok(self.dev, ["mdc"])
        counts = []
        for _ in range(12):
            got = self.take(self.r, 1, 1.5)
            if not got:
                break
            m, d = got[0]
            counts.append(m.delivery_count)
            settle(self.r, d, modified(failed=True))
        self.assertEqual(counts, list(range(10)),
                         "delivery counts seen before dead-lettering (max_delivery_count default 10)")
        self.assertEqual(self.feedback("mdc"), ["delivery-count-exceeded"])
        hits = dl.wait_for(lambda x: x.id == "mdc", 1, 5)
        self.assertEqual(len(hits), 1, "command over max_delivery_count not dead-lettered")
        self.assertEqual(hits[0][0].annotations.get(ANN_DEVICE), self.dev)

    def test_outcomes_settled_together(self):
        """Several outcomes in one credit window, settled out of order."""
        mids = ["mix-acc", "mix-rej", "mix-rel", "mix-fail", "mix-undel"]
        self.enqueue_ok(self.dev, mids)
        got = dict((m.id, (m, d)) for m, d in self.take(self.r, 5))
        self.assertEqual(sorted(got), sorted(mids))
        settle(self.r, got["mix-undel"][1], modified(undeliverable=True))
        settle(self.r, got["mix-fail"][1], modified(failed=True))
        self.r.settle(got["mix-rel"][1], RELEASED)
        self.r.settle(got["mix-rej"][1], REJECTED)
        self.r.settle(got["mix-acc"][1], ACCEPTED)
        again = self.take(self.r, 2)
        self.assertEqual(sorted((m.id, m.delivery_count) for m, _ in again), [("mix-fail", 1), ("mix-rel", 0)])
        for m, d in again:
            self.r.settle(d, ACCEPTED)
        want = {"mix-acc": "completed", "mix-rej": "rejected", "mix-rel": "completed", "mix-fail": "completed",
                "mix-undel": "undeliverable"}
        hits = self.fb.wait_for(lambda m: True, 5, 5)
        self.assertEqual({m.correlation_id: fb_status(m) for m, _ in hits}, want)
        self.fb.settle_for(0.3)
        self.assertEqual(len(self.fb.got), 5, "more than one feedback per outcome")


class FeedbackTest(CommandsTestCase):

    def test_correlation_id_keeps_the_message_id_type(self):
        dev, key = self.device()
        ids = [("string", "str-id"), ("ulong", ulong(1234567890123)),
               ("uuid", uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")), ("binary", b"\x00\x01binary-id\xff")]
        self.enqueue_ok(dev, [v for _, v in ids])
        r = self.egress(self.connect(dev, key))
        raw = {}
        r.h.on_raw = lambda m, b: raw.__setitem__(id(m), b)
        got = r.receive(4, timeout=5)
        self.assertEqual([m.id for m in got], [v for _, v in ids])
        self.assertEqual([id_types(raw[id(m)])["message-id"] for m in got], [t for t, _ in ids],
                         "message-id types changed on the way to the device")
        before = int(time.time() * 1000)
        fb = self.reader("feedback")
        hits = fb.wait_for(lambda m: True, 4, 5)
        self.assertEqual(len(hits), 4)
        by = {m.correlation_id: m for m, _ in hits}
        for t, v in ids:
            self.assertIn(v, by, "no feedback with correlation-id %r; got %r" % (v, list(by)))
            m = by[v]
            self.assertEqual(id_types(fb.raw[id(m)])["correlation-id"], t,
                             "feedback correlation-id for a %s message-id has another AMQP type" % t)
            p = m.properties or {}
            self.assertEqual(p.get("device-id"), dev)
            self.assertEqual(p.get("status"), "completed")
            self.assertIsInstance(p.get("time"), timestamp, "feedback time is not an AMQP timestamp: %r" % p)
            self.assertTrue(before - 5000 <= p["time"] <= before + 5000, p)
            body = m.body
            if isinstance(body, (bytes, bytearray)):
                body = body.decode("utf-8")
            json.loads(body)  # JSON body

    def test_service_without_feedback_scope_refused(self):
        c = self.service("cmdonly")
        self.assertAttachRefused(c, "feedback", sender=False)
        self.assertAttachRefused(c, "deadletter", sender=False)


class EnqueueRejectionTest(CommandsTestCase):

    def test_unknown_device_not_found(self):
        out = self.enqueue("devices/no-such-device/commands", [command("u1")])
        self.assertEnqueueRejected(out[0], NOT_FOUND, "command for an unknown device")
        out = self.enqueue(None, [command("u2", address="devices/no-such-device/commands")])
        self.assertEnqueueRejected(out[0], NOT_FOUND, "anonymous command for an unknown device")
        out = self.enqueue("devices/no-such-device/notifications", [command("u3")])
        self.assertEnqueueRejected(out[0], NOT_FOUND, "notification for an unknown device")

    def test_deleted_device_not_found(self):
        dev, _ = self.device()
        self.assertIn(self.gw.device_op(dev, "delete").status, (200, 204))
        out = self.enqueue("devices/%s/commands" % dev, [command("del1")])
        self.assertEnqueueRejected(out[0], NOT_FOUND, "command for a deleted device")

    def test_disabled_device_precondition_failed(self):
        dev, key = self.device()
        self.assertEqual(self.gw.device_op(dev, "disable").status, 200)
        out = self.enqueue("devices/%s/commands" % dev, [command("dis1")])
        self.assertEnqueueRejected(out[0], PRECONDITION, "command for a disabled device")
        out = self.enqueue("devices/%s/notifications" % dev, [command("dis2")])
        self.assertEnqueueRejected(out[0], PRECONDITION, "notification for a disabled device")
        self.assertEqual(self.gw.device_op(dev, "enable").status, 200)
        self.enqueue_ok(dev, ["en1"])
        r = self.egress(self.connect(dev, key))
        self.assertEqual([m.id for m in r.receive(1, timeout=3)], ["en1"])
        self.expect_nothing(r, 0.3)  # nothing refused while disabled was queued anyway

    def test_default_queue_limit_50_and_recovery(self):
        dev, key = self.device()
        mids = ["q%02d" % i for i in range(50)]
        self.enqueue_ok(dev, mids)
        self.assertEqual(self.queue_depth(dev), 50)
        out = self.enqueue("devices/%s/commands" % dev, [command("q50"), command("q51")])
        for o in out:
            self.assertEnqueueRejected(o, LIMIT, "51st command with the default queue limit 50")
        out = self.enqueue("devices/%s/notifications" % dev, [command("qn")])
        self.assertEnqueueRejected(out[0], LIMIT, "notification into a full queue")
        self.assertEqual(self.queue_depth(dev), 50)
        # the device takes one: room for exactly one more
        c = self.connect(dev, key)
        r = self.egress(c)
        got = r.receive(1, timeout=5)
        self.assertEqual([m.id for m in got], ["q00"])
        ok = self.gw_wait_accept(dev, "q-after-1")
        self.assertTrue(ok, "queue did not take a command after the device completed one")
        out = self.enqueue("devices/%s/commands" % dev, [command("q-refused")])
        self.assertEnqueueRejected(out[0], LIMIT, "queue full again")
        # drained: empty, and takes commands again
        rest = r.drain_until_idle(idle=0.5, timeout=10)
        self.assertEqual([m.id for m in rest], mids[1:] + ["q-after-1"])
        self.assertEqual(self.queue_depth(dev), 0)
        self.enqueue_ok(dev, ["q-after-drain-%d" % i for i in range(5)])
        self.assertEqual(self.queue_depth(dev), 5)

    def gw_wait_accept(self, dev, mid, timeout=3.0):
        """The device's accept commits asynchronously: retries the enqueue briefly while full."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, cond = self.enqueue("devices/%s/commands" % dev, [command(mid, body=("body-%s" % mid).encode())])[0]
            if state == ACCEPTED:
                return True
            self.assertEqual(cond, LIMIT)
            time.sleep(0.05)
        return False

    def test_per_device_queue_limit(self):
        dev, key = self.device({"queueLimit": 3})
        r = self.gw.rest("GET", "/v1/devices/" + dev)
        self.assertEqual(r.json.get("queueLimit"), 3)
        self.enqueue_ok(dev, ["p1", "p2"])
        self.enqueue_ok(dev, ["p3"], kind="notifications")
        out = self.enqueue("devices/%s/commands" % dev, [command("p4")])
        self.assertEnqueueRejected(out[0], LIMIT, "4th message with queueLimit 3")
        # raising the limit by PUT takes effect
        self.assertEqual(self.gw.rest("PUT", "/v1/devices/" + dev, {"queueLimit": 4}).status, 200)
        self.enqueue_ok(dev, ["p4"])
        out = self.enqueue("devices/%s/commands" % dev, [command("p5")])
        self.assertEnqueueRejected(out[0], LIMIT, "5th message with queueLimit 4")
        self.assertEqual(self.queue_depth(dev), 4)
        got = self.egress(self.connect(dev, key)).receive(4, timeout=5)
        self.assertEqual([m.id for m in got], ["p1", "p2", "p3", "p4"])

    def test_message_size_limit(self):
        dev, key = self.device()
        big = bytes(range(256)) * 800  # 200 KiB: under max_message_size 262144
        s = self.ops().sender("devices/%s/commands" % dev)
        self.assertEqual(s.send_outcome(command("big-ok", body=big)), (ACCEPTED, None))
        try:
            out = s.send_outcome(command("too-big", body=b"\x01" * (300 * 1024)))
        except (LinkRefused, AssertionError) as e:
            self.assertTrue(s.closed_by_peer, "no outcome and link not closed: %s" % e)
            self.assertEqual((s.condition or (None,))[0], SIZE)
        else:
            self.assertEnqueueRejected(out, SIZE, "a 300 KiB command with max_message_size 262144")
        r = self.egress(self.connect(dev, key))
        got = r.receive(1, timeout=5)
        self.assertEqual([m.id for m in got], ["big-ok"])
        self.assertEqual(got[0].body, big)
        self.expect_nothing(r, 0.3)

    def test_absolute_expiry_in_the_past_invalid_field(self):
        dev, _ = self.device()
        out = self.enqueue("devices/%s/commands" % dev, [command("past", expiry_time=time.time() - 60)])
        self.assertEnqueueRejected(out[0], INVALID, "absolute-expiry-time in the past")
        self.assertEqual(self.queue_depth(dev), 0)


class ConfiguredQueueLimitTest(CommandsTestCase):
    GATEWAY_SECTIONS = {"commands": {"queue_limit": "5"}}

    def test_config_queue_limit_and_per_device_override(self):
        dev, _ = self.device()
        big, _ = self.device({"queueLimit": 7})
        self.enqueue_ok(dev, ["c%d" % i for i in range(5)])
        out = self.enqueue("devices/%s/commands" % dev, [command("c5")])
        self.assertEnqueueRejected(out[0], LIMIT, "6th command with [commands] queue_limit = 5")
        self.enqueue_ok(big, ["b%d" % i for i in range(7)])
        out = self.enqueue("devices/%s/commands" % big, [command("b7")])
        self.assertEnqueueRejected(out[0], LIMIT, "8th command with queueLimit 7 over queue_limit 5")


class AddressScopeTest(CommandsTestCase):

    def test_anonymous_relay_routes_by_to(self):
        a, ka = self.device()
        b, kb = self.device()
        c = self.service("cmdonly")
        s = c.sender(None)
        self.assertEqual(s.send_outcome(command("to-a", address="devices/%s/commands" % a)), (ACCEPTED, None))
        self.assertEqual(s.send_outcome(command("to-b", address="devices/%s/commands" % b)), (ACCEPTED, None))
        for dev, key, mid in ((a, ka, "to-a"), (b, kb, "to-b")):
            r = self.egress(self.connect(dev, key))
            self.assertEqual([m.id for m in r.receive(1, timeout=3)], [mid])
            self.expect_nothing(r, 0.3)

    def test_anonymous_relay_refuses_what_the_scope_does_not_allow(self):
        dev, _ = self.device({"groups": ["g1"]})
        c = self.service("cmdonly")
        s = c.sender(None)
        for to in ("devices/%s/notifications" % dev, "groups/g1/notifications"):
            self.assertEnqueueRejected(s.send_outcome(command("x", address=to)), UNAUTHORIZED,
                                       "commands:send only service relaying to %s" % to)
        n = self.service("notifonly")
        s = n.sender(None)
        self.assertEnqueueRejected(s.send_outcome(command("y", address="devices/%s/commands" % dev)), UNAUTHORIZED,
                                   "notifications:send only service relaying a command")
        self.assertEqual(s.send_outcome(command("y2", address="devices/%s/notifications" % dev)), (ACCEPTED, None))
        # not an address a service may send to
        for to in ("telemetry", "feedback", None):
            state, cond = s.send_outcome(command("z", address=to))
            self.assertEqual(state, REJECTED, "anonymous message to %r: %s %s" % (to, state, cond))
        self.assertEqual(self.queue_depth(dev), 1)

    def test_named_senders_need_their_scope(self):
        dev, _ = self.device({"groups": ["g1"]})
        n = self.service("notifonly")
        self.assertAttachRefused(n, "devices/%s/commands" % dev)
        c = self.service("cmdonly")
        self.assertAttachRefused(c, "devices/%s/notifications" % dev)
        self.assertAttachRefused(c, "groups/g1/notifications")
        b = self.service("backend")  # telemetry:read registry:read
        self.assertAttachRefused(b, "devices/%s/commands" % dev)
        # a service without commands:send or notifications:send gets no anonymous relay either
        try:
            s = b.sender(None)
        except LinkRefused:
            pass
        else:
            state, _ = s.send_outcome(command("nope", address="devices/%s/commands" % dev))
            self.assertEqual(state, REJECTED)
        self.assertEqual(self.queue_depth(dev), 0)

    def test_device_cannot_enqueue_for_itself_or_read_service_logs(self):
        dev, key = self.device()
        c = self.connect(dev, key)
        for addr in ("feedback", "deadletter", "responses", "inquiries"):
            self.assertAttachRefused(c, addr, sender=False)
        self.assertAttachRefused(c, "devices/%s/notifications" % dev)
        self.assertAttachRefused(c, "groups/g/notifications")


if __name__ == "__main__":
    unittest.main()
