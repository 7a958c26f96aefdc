"""Consumer groups on the telemetry log: every group sees every message, receivers in one
group share the work, and what is not accepted comes back to the group.

Each test runs its own gateway, so the log holds exactly what the test sent."""

import unittest

from warden_harness import ACCEPTED, RELEASED, WardenTestCase, new_id, telemetry_message


class ConsumerGroupTest(WardenTestCase):

    def setUp(self):
        self.gw = self.start_gateway()
        dev, key = self.gw.create_device()
        self.dev = dev
        self.devc = self.device_client(self.gw, dev, key)
        self.sender = self.devc.sender("telemetry")

    def tearDown(self):
        self.gw.assert_alive()

    def send(self, n, tag="m"):
        ids = [new_id(tag) for _ in range(n)]
        for i, mid in enumerate(ids):
            self.assertEqual(self.sender.send(telemetry_message(b"%s %d" % (tag.encode(), i), msg_id=mid)), ACCEPTED)
        return ids

    def test_every_group_sees_every_message(self):
        # the groups exist (have attached) before the messages come
        receivers = {}
        for address in ("telemetry", "telemetry/alpha", "telemetry/beta"):
            receivers[address] = self.service_client(self.gw).receiver(address)
        ids = self.send(6)
        for address, r in receivers.items():
            with self.subTest(address=address):
                got = r.receive(6, timeout=5)
                self.assertEqual([m.id for m in got], ids, "group %s did not get every message in order" % address)
        # "telemetry" is group $default: a receiver on its explicit name finds it all acknowledged
        r = self.service_client(self.gw).receiver("telemetry/$default", credit=10)
        self.assertEqual(r.wait_messages(1, timeout=1.0), 0,
                         "telemetry/$default is not the same group as telemetry")
        r.close()
        # and a new message reaches every group again
        late = self.send(1, "late")
        for address, r in receivers.items():
            with self.subTest(address=address, message="late"):
                got = r.receive(1, timeout=5)
                self.assertEqual([m.id for m in got], late)

    def test_new_group_starts_at_oldest_retained_message(self):
        # nothing has been acknowledged by anyone: a group created afterwards gets it all
        early = self.send(3, "early")
        c = self.service_client(self.gw)
        a = c.receiver("telemetry/a")
        self.assertEqual([m.id for m in a.receive(3, timeout=5)], early)

    def test_groups_are_independent(self):
        c = self.service_client(self.gw)
        a = c.receiver("telemetry/a")
        b = c.receiver("telemetry/b")  # attached, no credit yet
        first = self.send(3, "first")
        self.assertEqual([m.id for m in a.receive(3, timeout=5)], first)
        a.close()
        second = self.send(3, "second")
        # group a resumes after what it acknowledged
        a2 = c.receiver("telemetry/a")
        got = a2.receive(6, timeout=2.0)
        self.assertEqual([m.id for m in got], second)
        # group b is untouched by a's acknowledgements
        self.assertEqual([m.id for m in b.receive(6, timeout=5)], first + second)

    def test_receivers_in_one_group_share_the_work(self):
        c1 = self.service_client(self.gw)
        c2 = self.service_client(self.gw)
        r1 = c1.receiver("telemetry/workers", credit=5)
        r2 = c2.receiver("telemetry/workers", credit=5)
        ids = self.send(10)
        # together they hold credit for exactly 10: each must get 5, none twice
        got1 = r1.receive(5, timeout=5, credit=False)
        got2 = r2.receive(5, timeout=5, credit=False)
        ids1, ids2 = [m.id for m in got1], [m.id for m in got2]
        self.assertEqual(len(ids1), 5, "receiver 1 got %d of its 5" % len(ids1))
        self.assertEqual(len(ids2), 5, "receiver 2 got %d of its 5" % len(ids2))
        self.assertFalse(set(ids1) & set(ids2), "a message went to both receivers of one group")
        self.assertEqual(set(ids1) | set(ids2), set(ids))
        # all accepted: nothing comes back to the group
        c3 = self.service_client(self.gw)
        r3 = c3.receiver("telemetry/workers", credit=10)
        self.assertEqual(r3.wait_messages(1, timeout=1.5), 0, "accepted messages were redelivered")
        # control: a new message does reach the group
        new = self.send(1, "late")
        got = r3.receive(1, timeout=5)  # r1 and r2 have no credit left
        self.assertEqual([m.id for m in got], new)

    def test_released_message_is_redelivered_to_the_group(self):
        (mid,) = self.send(1)
        c1 = self.service_client(self.gw)
        r1 = c1.receiver("telemetry/rel", credit=1)
        self.assertEqual(r1.wait_messages(1, timeout=5), 1)
        [(m, d)] = r1.take()
        self.assertEqual(m.id, mid)
        r1.settle(d, RELEASED)
        # r1 has no credit left; another receiver in the group gets it
        c2 = self.service_client(self.gw)
        r2 = c2.receiver("telemetry/rel")
        got = r2.receive(1, timeout=5)
        self.assertEqual([x.id for x in got], [mid], "released message not redelivered")
        self.assertEqual(got[0].body, m.body)

    def test_detach_without_settling_redelivers(self):
        ids = self.send(2)
        c1 = self.service_client(self.gw)
        r1 = c1.receiver("telemetry/det", credit=2)
        self.assertEqual(r1.wait_messages(2, timeout=5), 2)
        self.assertEqual([m.id for m, _ in r1.take()], ids)
        r1.close()  # unsettled
        c2 = self.service_client(self.gw)
        got = c2.receiver("telemetry/det").receive(2, timeout=5)
        self.assertEqual(sorted(m.id for m in got), sorted(ids), "unsettled messages not redelivered after detach")

    def test_connection_loss_without_settling_redelivers(self):
        ids = self.send(2)
        c1 = self.gw.service_client()
        r1 = c1.receiver("telemetry/lost", credit=2)
        self.assertEqual(r1.wait_messages(2, timeout=5), 2)
        r1.take()
        c1.close()  # connection gone with both unsettled
        c2 = self.service_client(self.gw)
        got = c2.receiver("telemetry/lost").receive(2, timeout=5)
        self.assertEqual(sorted(m.id for m in got), sorted(ids), "unsettled messages not redelivered after disconnect")

    def test_accepted_message_is_not_redelivered(self):
        ids = self.send(2)
        c1 = self.service_client(self.gw)
        r1 = c1.receiver("telemetry/acc", credit=1)
        got = r1.receive(1, timeout=5, credit=False)  # accepts the first
        self.assertEqual([m.id for m in got], ids[:1])
        r1.close()
        c2 = self.service_client(self.gw)
        r2 = c2.receiver("telemetry/acc")
        got = r2.receive(2, timeout=1.5)
        self.assertEqual([m.id for m in got], ids[1:], "accepted message came back, or the other did not")


if __name__ == "__main__":
    unittest.main()
