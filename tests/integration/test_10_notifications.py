"""Notifications (issue #3): to one device or to every enabled member of a group, offline members
included, each exactly once; skipped members; no feedback for notifications."""

import time
import unittest

from cmd_helpers import (LIMIT, NOT_FOUND, CommandsTestCase, command, fb_status, modified, settle)
from warden_harness import ACCEPTED, ANN_DEVICE, REJECTED, new_id

N = 20


class NotificationTest(CommandsTestCase):

    def notify_group(self, group, mid, client=None, anonymous=False):
        msg = command(mid, body=("note-%s" % mid).encode(), properties={"kind": "notification"})
        if anonymous:
            msg.address = "groups/%s/notifications" % group
            return self.enqueue(None, [msg], client)[0]
        return self.enqueue("groups/%s/notifications" % group, [msg], client)[0]

    def test_group_fanout_to_20_members_online_and_offline(self):
        group = new_id("fleet")
        members = [self.device({"groups": [group, "other"]}) for _ in range(N)]
        disabled, _ = self.device({"groups": [group]})
        self.assertEqual(self.gw.device_op(disabled, "disable").status, 200)
        full, full_key = self.device({"groups": [group], "queueLimit": 1})
        self.enqueue_ok(full, ["filler"])
        outsider, outsider_key = self.device({"groups": ["other-" + group]})

        online = members[:N // 2]
        offline = members[N // 2:]
        links = []
        for dev, key in online:
            c = self.connect(dev, key)
            links.append((dev, c, self.egress(c, credit=10)))
        for _, c, _ in links:
            c.pump(0.01)

        self.assertEqual(self.notify_group(group, "n1"), (ACCEPTED, None))
        self.assertEqual(self.notify_group(group, "n2", client=self.service("notifonly"), anonymous=True),
                         (ACCEPTED, None))

        # online members: both, in order, exactly once
        for dev, c, r in links:
            r.wait_messages(2, 5.0)
        for dev, c, r in links:
            c.pump(0.05)
            got = r.take()
            self.assertEqual([m.id for m, _ in got], ["n1", "n2"], "online member %s received %r"
                             % (dev, [(m.id, m.delivery_count) for m, _ in got]))
            for m, d in got:
                self.assertEqual(m.body, ("note-%s" % m.id).encode())
                self.assertEqual(m.properties, {"kind": "notification"})
                r.settle(d, ACCEPTED, pump=False)
            c.pump()
        # offline members: held for them
        for dev, _ in offline:
            self.assertEqual(self.queue_depth(dev), 2, "offline member %s queue depth" % dev)
        self.assertEqual(self.queue_depth(disabled), 0, "a disabled member was given the notification")
        self.assertEqual(self.queue_depth(full), 1, "a member with a full queue was given the notification")
        self.assertEqual(self.queue_depth(outsider), 0, "a non-member was given the notification")
        for dev, key in offline:
            r = self.egress(self.connect(dev, key))
            got = r.receive(2, timeout=5)
            self.assertEqual([m.id for m in got], ["n1", "n2"], "offline member %s on connecting" % dev)
        # nobody gets anything twice
        for dev, c, r in links:
            self.expect_nothing(r, 0.05)
        time.sleep(0.2)
        for dev, c, r in links:
            c.pump(0.01)
            self.assertEqual(r.take(), [], "a member got a notification twice")
        for dev, key in offline:
            self.assertEqual(self.queue_depth(dev), 0)
        r = self.egress(self.connect(full, full_key))
        self.assertEqual([m.id for m in r.receive(1, timeout=5)], ["filler"])
        self.expect_nothing(r, 0.3)
        r = self.egress(self.connect(outsider, outsider_key))
        self.expect_nothing(r, 0.3)
        # no feedback for notifications: only the filler command reports
        fb = self.reader("feedback")
        fb.wait_for(lambda m: m.correlation_id == "filler", 1, 5)
        fb.settle_for(0.3)
        self.assertEqual([(m.correlation_id, fb_status(m)) for m, _ in fb.got], [("filler", "completed")])

    def test_device_notification_has_no_feedback(self):
        dev, key = self.device()
        mids = ["dn-acc", "dn-rej", "dn-undel", "dn-fail"]
        out = self.enqueue("devices/%s/notifications" % dev, [command(mid) for mid in mids])
        self.assertEqual(out, [(ACCEPTED, None)] * 4)
        r = self.egress(self.connect(dev, key))
        got = {m.id: (m, d) for m, d in self.take(r, 4)}
        self.assertEqual(sorted(got), sorted(mids))
        r.settle(got["dn-acc"][1], ACCEPTED)
        r.settle(got["dn-rej"][1], REJECTED)
        settle(r, got["dn-undel"][1], modified(undeliverable=True))
        settle(r, got["dn-fail"][1], modified(failed=True))
        again = self.take(r, 1)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in again], [("dn-fail", 1)])
        r.settle(again[0][1], ACCEPTED)
        self.expect_nothing(r, 0.3)
        dl = self.reader("deadletter")
        hits = dl.wait_for(lambda m: m.id == "dn-undel", 1, 5)
        self.assertEqual(len(hits), 1, "undeliverable notification not dead-lettered")
        self.assertEqual(hits[0][0].annotations.get(ANN_DEVICE), dev)
        fb = self.reader("feedback")
        fb.settle_for(0.5)
        self.assertEqual(fb.got, [], "notifications produced feedback: %r"
                         % [(m.correlation_id, fb_status(m)) for m, _ in fb.got])

    def test_unknown_and_empty_groups_not_found(self):
        def rejected(group, what):
            state, cond = self.notify_group(group, new_id("n"))
            self.assertEqual((state, cond), (REJECTED, NOT_FOUND), what)

        rejected("no-such-group", "notification to an unknown group")
        dev, _ = self.device({"groups": ["left"]})
        self.assertEqual(self.gw.rest("PUT", "/v1/devices/" + dev, {"groups": []}).status, 200)
        rejected("left", "notification to a group whose only member left it")
        gone, _ = self.device({"groups": ["gone"]})
        self.assertIn(self.gw.device_op(gone, "delete").status, (200, 204))
        rejected("gone", "notification to a group whose only member was deleted")
        self.assertEqual(self.queue_depth(dev), 0)

    def test_membership_changes_apply_to_later_notifications(self):
        a, ka = self.device({"groups": ["g"]})
        b, kb = self.device()
        self.assertEqual(self.notify_group("g", "before-join"), (ACCEPTED, None))
        self.assertEqual(self.gw.rest("PUT", "/v1/devices/" + b, {"groups": ["g"]}).status, 200)
        self.assertEqual(self.notify_group("g", "after-join"), (ACCEPTED, None))
        self.assertEqual(self.gw.rest("PUT", "/v1/devices/" + a, {"groups": []}).status, 200)
        self.assertEqual(self.notify_group("g", "after-leave"), (ACCEPTED, None))
        ra = self.egress(self.connect(a, ka))
        self.assertEqual([m.id for m in ra.receive(2, timeout=5)], ["before-join", "after-join"])
        self.expect_nothing(ra, 0.3)
        rb = self.egress(self.connect(b, kb))
        self.assertEqual([m.id for m in rb.receive(2, timeout=5)], ["after-join", "after-leave"])
        self.expect_nothing(rb, 0.3)

    def test_group_notification_skips_full_member_but_reaches_others(self):
        a, ka = self.device({"groups": ["gf"], "queueLimit": 2})
        b, kb = self.device({"groups": ["gf"], "queueLimit": 2})
        self.enqueue_ok(a, ["a1", "a2"])
        self.assertEqual(self.notify_group("gf", "gn1"), (ACCEPTED, None))
        self.assertEqual(self.queue_depth(a), 2)
        self.assertEqual(self.queue_depth(b), 1)
        # a device-addressed notification to the full member is refused, not skipped
        out = self.enqueue("devices/%s/notifications" % a, [command("direct")])[0]
        self.assertEqual(out, (REJECTED, LIMIT))


if __name__ == "__main__":
    unittest.main()
