"""Telemetry in: settlement, the annotations warden adds, opaque bodies, address rules."""

import time
import unittest

from proton import timestamp, ulong

from limits_helpers import metric_value
from warden_harness import (ACCEPTED, ANN_DEVICE, ANN_ENQUEUED, ANN_SEQUENCE, REJECTED,
                            LinkRefused, WardenTestCase, new_id, telemetry_message)


class TelemetryTest(WardenTestCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def device(self, tls=False):
        dev, key = self.gw.create_device()
        return dev, self.device_client(self.gw, dev, key, tls=tls)

    def read(self, ids, device=None, group=None, **kw):
        return self.read_group(self.gw, group or new_id("g"), ids, device=device, **kw)

    def test_accepted_and_annotated_body_untouched(self):
        dev, c = self.device()
        body = bytes(range(256)) * 8
        mid = new_id("m")
        msg = telemetry_message(body, msg_id=mid, content_type="application/octet-stream",
                                properties={"temp": 21.5, "unit": "C"})
        s = c.sender("telemetry")
        before = int(time.time() * 1000)
        self.assertEqual(s.send(msg), ACCEPTED)
        after = int(time.time() * 1000)

        got = self.read([mid], device=dev)
        self.assertEqual([m.id for m in got], [mid])
        m = got[0]
        self.assertEqual(m.body, body, "payload changed")
        self.assertTrue(m.inferred, "a data-section body came back as an amqp-value")
        self.assertEqual(str(m.content_type), "application/octet-stream")
        self.assertEqual(m.properties, {"temp": 21.5, "unit": "C"})
        ann = m.annotations or {}
        self.assertEqual(ann.get(ANN_DEVICE), dev)
        enq = ann.get(ANN_ENQUEUED)
        self.assertIsInstance(enq, timestamp, "x-opt-enqueued-time must be an AMQP timestamp, got %r" % (enq,))
        self.assertTrue(before - 1000 <= enq <= after + 1000,
                        "x-opt-enqueued-time %d not within [%d, %d] ms" % (enq, before, after))
        seq = ann.get(ANN_SEQUENCE)
        self.assertIsInstance(seq, ulong, "x-opt-sequence-number must be a ulong, got %r" % (seq,))

    def test_amqp_value_bodies_untouched(self):
        dev, c = self.device()
        bodies = {new_id("m"): "plain text ünïcödé",
                  new_id("m"): {"temperature": 21, "nested": [1, 2, {"x": None}]},
                  new_id("m"): b"\x00\xff binary as amqp-value"}
        s = c.sender("telemetry")
        for mid, b in bodies.items():
            self.assertEqual(s.send(telemetry_message(b, msg_id=mid, inferred=False)), ACCEPTED)
        got = {m.id: m for m in self.read(list(bodies), device=dev)}
        self.assertEqual(set(got), set(bodies))
        for mid, b in bodies.items():
            self.assertEqual(got[mid].body, b)
            self.assertFalse(got[mid].inferred, "an amqp-value body came back as a data section")

    def test_device_identity_cannot_be_spoofed(self):
        dev, c = self.device()
        victim, _ = self.gw.create_device()
        mid = new_id("m")
        m = telemetry_message(b"spoof", msg_id=mid, address="devices/%s/telemetry" % victim,
                              properties={"x-opt-device-id": victim, "iothub-connection-device-id": victim})
        m.annotations = {ANN_DEVICE: victim, ANN_SEQUENCE: ulong(987654321), ANN_ENQUEUED: timestamp(1000)}
        self.assertEqual(c.sender("telemetry").send(m), ACCEPTED)
        got = self.read([mid])
        self.assertEqual([x.id for x in got], [mid])
        ann = got[0].annotations
        self.assertEqual(ann.get(ANN_DEVICE), dev, "x-opt-device-id must be the authenticated device")
        self.assertNotEqual(ann.get(ANN_SEQUENCE), 987654321, "device-supplied sequence number kept")
        self.assertGreater(ann.get(ANN_ENQUEUED), 1000 * 1000, "device-supplied enqueued time kept")

    def test_sequence_numbers_increase_in_send_order(self):
        dev, c = self.device()
        ids = [new_id("m") for _ in range(8)]
        s = c.sender("telemetry")
        for i, mid in enumerate(ids):
            self.assertEqual(s.send(telemetry_message(b"n%d" % i, msg_id=mid)), ACCEPTED)
        got = self.read(ids, device=dev)
        self.assertEqual([m.id for m in got], ids, "one device's telemetry must come out in order")
        seqs = [m.annotations[ANN_SEQUENCE] for m in got]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), len(seqs), "duplicate sequence numbers: %r" % seqs)
        times = [m.annotations[ANN_ENQUEUED] for m in got]
        self.assertEqual(times, sorted(times), "enqueued times go backwards: %r" % times)

    def test_one_message_in_flight_is_acknowledged_from_the_journal(self):
        """A device waiting for each settlement is answered once the append journal holds the
        message (docs/decisions/0006-append-journal.md); consumers still get every message, in order."""
        def journal_writes():
            r = self.gw.rest("GET", "/metrics")
            self.assertEqual(r.status, 200, r)
            value = metric_value(r.body.decode("utf-8"), "warden_store_journal_writes_total")
            self.assertIsNotNone(value, "warden_store_journal_writes_total is missing from /metrics")
            return value
        dev, c = self.device()
        s = c.sender("telemetry")
        self.assertEqual(s.send(telemetry_message(b"first", msg_id=new_id("m"))), ACCEPTED)
        before = journal_writes()
        ids = [new_id("m") for _ in range(20)]
        for i, mid in enumerate(ids):
            self.assertEqual(s.send(telemetry_message(b"j%d" % i, msg_id=mid)), ACCEPTED)
        self.assertGreaterEqual(journal_writes() - before, 10, "one at a time, most batches are one message")
        got = self.read(ids, device=dev)
        self.assertEqual([m.id for m in got][-20:], ids)

    def test_own_alias_address(self):
        dev, c = self.device()
        mid = new_id("m")
        self.send_telemetry(c, [telemetry_message(b"alias", msg_id=mid)], address="devices/%s/telemetry" % dev)
        got = self.read([mid])
        self.assertEqual([m.id for m in got], [mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev)

    def test_presettled_telemetry_is_stored(self):
        dev, c = self.device()
        mid = new_id("m")
        s = c.sender("telemetry", presettled=True)
        s.send(telemetry_message(b"at most once", msg_id=mid))
        got = self.read([mid], timeout=5)
        self.assertEqual([m.id for m in got], [mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev)

    def test_tls_device_telemetry(self):
        dev, c = self.device(tls=True)
        mid = new_id("m")
        self.send_telemetry(c, [telemetry_message(b"tls", msg_id=mid)])
        got = self.read([mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev)

    # -- address rules ---------------------------------------------------------------------

    def test_device_cannot_send_as_another_device(self):
        dev, c = self.device()
        other, _ = self.gw.create_device()
        self.assertAttachRefused(c, "devices/%s/telemetry" % other)
        self.assertAttachRefused(c, "devices/%s/telemetry" % new_id("nosuch"))
        # the connection itself stays usable
        self.send_telemetry(c, [telemetry_message(b"still fine")])

    def test_device_cannot_read_telemetry(self):
        dev, c = self.device()
        for address in ("telemetry", "telemetry/$default", "telemetry/" + new_id("g")):
            with self.subTest(address=address):
                self.assertAttachRefused(c, address, sender=False)

    def test_device_cannot_use_service_addresses(self):
        dev, c = self.device()
        self.assertAttachRefused(c, "feedback", sender=True)
        self.assertAttachRefused(c, "feedback", sender=False)
        self.assertAttachRefused(c, "deadletter", sender=False)

    def test_service_without_scope_cannot_read_telemetry(self):
        c = self.service_client(self.gw, "noscope")
        self.assertAttachRefused(c, "telemetry", sender=False)
        self.assertAttachRefused(c, "telemetry/" + new_id("g"), sender=False)
        # control: the scoped service may
        ok = self.service_client(self.gw, "backend")
        ok.receiver("telemetry/" + new_id("g"))

    def test_service_cannot_inject_telemetry(self):
        c = self.service_client(self.gw, "backend")
        self.assertAttachRefused(c, "telemetry", sender=True)

    def test_unknown_address_refused(self):
        dev, c = self.device()
        got = c.attach_refusal("no/such/address", sender=True)
        self.assertIsNotNone(got, "a sender to an unknown address stayed attached")

    # -- limits ----------------------------------------------------------------------------

    def test_max_message_size(self):
        dev, c = self.device()
        mid = new_id("m")
        body = bytes(range(256)) * 800  # 200 KiB, under the 256 KiB limit
        self.send_telemetry(c, [telemetry_message(body, msg_id=mid)])
        got = self.read([mid])
        self.assertEqual(got[0].body, body)

        s = c.sender("telemetry")
        too_big = telemetry_message(b"\x01" * (300 * 1024), msg_id=new_id("big"))
        try:
            state = s.send(too_big, timeout=10)
        except (LinkRefused, AssertionError) as e:
            # the link may be detached instead of the message rejected
            self.assertTrue(s.closed_by_peer, "no outcome and link not closed: %s" % e)
            self.assertEqual((s.condition or (None,))[0], "amqp:link:message-size-exceeded",
                             "oversized message closed the link with %r" % (s.condition,))
        else:
            self.assertNotEqual(state, ACCEPTED, "a 300 KiB message was accepted with max_message_size 262144")
            self.assertEqual(state, REJECTED)
        # the gateway survives and the device can go on on a new link
        self.gw.assert_alive()
        self.send_telemetry(c, [telemetry_message(b"after too big")])


if __name__ == "__main__":
    unittest.main()
