"""Responses, inquiries and peer-to-peer commands (issue #3), and a rhea device settling commands.

- a device's response (correlation-id = a command's message-id) reaches services on the command's
  reply-to (`responses` by default, `responses/N`), with x-opt-device-id = the authenticated device;
- a device's inquiry reaches services with inquiries:read; their reply, sent to
  devices/<id>/commands, lands in the device's queue;
- a device may send to devices/E/commands only where its registry entry's `peers` lists E or one of
  E's groups (else amqp:unauthorized-access at attach); E sees x-opt-from-device = the sender."""

import base64
import unittest

from proton import Message, ulong

from cmd_helpers import ANN_FROM, CMDONLY_SECRET, CommandsTestCase, command, fb_status
from warden_harness import ACCEPTED, ANN_DEVICE, rhea_available, run_rhea, sas_token


def response(correlation_id, body=b"result", **kw):
    m = Message(body=body, inferred=True, **kw)
    m.correlation_id = correlation_id
    return m


class ResponseTest(CommandsTestCase):

    def run_command(self, dev, key, mids_and_reply_to):
        """Enqueues commands (mid, reply_to), lets the device take them all; returns the device client."""
        s = self.ops().sender("devices/%s/commands" % dev)
        for mid, reply_to in mids_and_reply_to:
            kw = {"reply_to": reply_to} if reply_to else {}
            self.assertEqual(s.send_outcome(command(mid, **kw)), (ACCEPTED, None))
        c = self.connect(dev, key)
        got = self.egress(c).receive(len(mids_and_reply_to), timeout=5)
        self.assertEqual([m.id for m in got], [mid for mid, _ in mids_and_reply_to])
        return c, got

    def test_response_reaches_default_responses_with_device_id(self):
        dev, key = self.device()
        other, _ = self.device()
        c, _ = self.run_command(dev, key, [("cmd-1", None)])
        reader = self.reader("responses")
        s = c.sender("responses")
        spoof = response("cmd-1", body=b"\x00\x01 opaque result", properties={"code": 200},
                         annotations={ANN_DEVICE: other}, content_type="application/octet-stream")
        self.assertEqual(s.send_outcome(spoof), (ACCEPTED, None))
        hits = reader.wait_for(lambda m: m.correlation_id == "cmd-1", 1, 5)
        self.assertEqual(len(hits), 1, "response not delivered on `responses`")
        m = hits[0][0]
        self.assertEqual(m.body, b"\x00\x01 opaque result")
        self.assertEqual(m.properties, {"code": 200})
        self.assertEqual(str(m.content_type), "application/octet-stream")
        self.assertEqual(m.annotations.get(ANN_DEVICE), dev, "x-opt-device-id is not the authenticated device")

    def test_responses_routed_by_reply_to(self):
        dev, key = self.device()
        c, _ = self.run_command(dev, key, [("to-app1", "responses/app1"), ("to-default", None),
                                           (ulong(4242), "responses/app2"), ("to-named-default", "responses")])
        app1 = self.reader("responses/app1")
        app2 = self.reader("responses/app2", client=app1.client)
        default = self.reader("responses", client=self.service("cmdonly"))
        s = c.sender("responses")
        for cid in ("to-app1", "to-default", ulong(4242), "to-named-default"):
            self.assertEqual(s.send_outcome(response(cid, body=b"r")), (ACCEPTED, None))
        self.assertEqual([m.correlation_id for m in (x for x, _ in app1.wait_for(lambda m: True, 1, 5))], ["to-app1"])
        self.assertEqual([m.correlation_id for m in (x for x, _ in app2.wait_for(lambda m: True, 1, 5))], [4242])
        got = default.wait_for(lambda m: True, 2, 5)
        self.assertEqual(sorted(m.correlation_id for m, _ in got), ["to-default", "to-named-default"])
        for r in (app1, app2, default):
            r.settle_for(0.2)
        self.assertEqual(len(app1.got) + len(app2.got) + len(default.got), 4, "a response delivered twice")
        for r in (app1, app2, default):
            for m, _ in r.got:
                self.assertEqual(m.annotations.get(ANN_DEVICE), dev)

    def test_responses_need_commands_send(self):
        self.assertAttachRefused(self.service("notifonly"), "responses", sender=False)
        self.assertAttachRefused(self.service("backend"), "responses/app1", sender=False)
        dev, key = self.device()
        # a device cannot read responses
        self.assertAttachRefused(self.connect(dev, key), "responses", sender=False)


class InquiryTest(CommandsTestCase):

    def test_inquiry_and_reply(self):
        dev, key = self.device()
        other, _ = self.device()
        c = self.connect(dev, key)
        inq = self.reader("inquiries")
        s = c.sender("inquiries")
        m = Message(body=b"what is my config?", inferred=True, properties={"q": "config"},
                    annotations={ANN_DEVICE: other})
        m.id = "inq-1"
        self.assertEqual(s.send_outcome(m), (ACCEPTED, None))
        hits = inq.wait_for(lambda x: x.id == "inq-1", 1, 5)
        self.assertEqual(len(hits), 1, "inquiry not delivered to the service")
        got = hits[0][0]
        self.assertEqual(got.body, b"what is my config?")
        self.assertEqual(got.properties, {"q": "config"})
        self.assertEqual(got.annotations.get(ANN_DEVICE), dev, "inquiry's x-opt-device-id is not the device")
        # the service replies to devices/<id>/commands; it lands in the device's queue
        reply = command("reply-1", body=b"config: 42")
        reply.correlation_id = "inq-1"
        out = self.enqueue("devices/%s/commands" % got.annotations[ANN_DEVICE], [reply], client=inq.client)
        self.assertEqual(out, [(ACCEPTED, None)])
        r = self.egress(c)
        [m] = r.receive(1, timeout=5)
        self.assertEqual((m.id, m.correlation_id, m.body), ("reply-1", "inq-1", b"config: 42"))

    def test_inquiries_shared_among_receivers_and_scoped(self):
        dev, key = self.device()
        c = self.connect(dev, key)
        a = self.reader("inquiries")
        b = self.reader("inquiries")
        s = c.sender("inquiries")
        ids = ["inq-%d" % i for i in range(6)]
        for mid in ids:
            m = Message(body=b"?", inferred=True)
            m.id = mid
            self.assertEqual(s.send_outcome(m), (ACCEPTED, None))
        for _ in range(20):
            a.poll(0.05)
            b.poll(0.05)
            if len(a.got) + len(b.got) >= len(ids):
                break
        a.settle_for(0.2)
        b.settle_for(0.2)
        seen = [m.id for m, _ in a.got + b.got]
        self.assertEqual(sorted(seen), sorted(ids), "inquiries lost or duplicated across two receivers")
        self.assertAttachRefused(self.service("cmdonly"), "inquiries", sender=False)
        self.assertAttachRefused(c, "inquiries", sender=False)


class PeerToPeerTest(CommandsTestCase):

    def test_peer_listed_by_id_allowed_with_from_device(self):
        valve, vkey = self.device()
        ctrl, ckey = self.device({"peers": [valve]})
        c = self.connect(ctrl, ckey)
        s = c.sender("devices/%s/commands" % valve)
        m = command("p2p-1", body=b"open", annotations={ANN_FROM: "mallory", ANN_DEVICE: "mallory"})
        self.assertEqual(s.send_outcome(m), (ACCEPTED, None))
        self.assertEqual(s.send_outcome(command("p2p-2", body=b"close")), (ACCEPTED, None))
        r = self.egress(self.connect(valve, vkey))
        got = r.receive(2, timeout=5)
        self.assertEqual([m.id for m in got], ["p2p-1", "p2p-2"])
        for m in got:
            self.assertEqual((m.annotations or {}).get(ANN_FROM), ctrl,
                             "x-opt-from-device is %r, not the sending device" % (m.annotations or {}).get(ANN_FROM))
        self.assertEqual(got[0].body, b"open")

    def test_service_cannot_forge_from_device(self):
        dev, key = self.device()
        m = command("forged", annotations={ANN_FROM: "someone-else", ANN_DEVICE: "someone-else"})
        self.assertEqual(self.enqueue("devices/%s/commands" % dev, [m]), [(ACCEPTED, None)])
        [got] = self.egress(self.connect(dev, key)).receive(1, timeout=5)
        ann = got.annotations or {}
        self.assertNotIn(ANN_FROM, ann, "a service's x-opt-from-device reached the device: %r" % ann)
        self.assertNotEqual(ann.get(ANN_DEVICE), "someone-else")

    def test_peer_by_group_allowed_others_refused(self):
        v1, k1 = self.device({"groups": ["valves"]})
        pump, _ = self.device({"groups": ["pumps"]})
        ctrl, ckey = self.device({"peers": ["valves"]})
        c = self.connect(ctrl, ckey)
        s = c.sender("devices/%s/commands" % v1)
        self.assertEqual(s.send_outcome(command("by-group")), (ACCEPTED, None))
        self.assertAttachRefused(c, "devices/%s/commands" % pump)
        self.assertAttachRefused(c, "devices/no-such-device/commands")
        r = self.egress(self.connect(v1, k1))
        [m] = r.receive(1, timeout=5)
        self.assertEqual((m.id, m.annotations.get(ANN_FROM)), ("by-group", ctrl))
        self.assertEqual(self.queue_depth(pump), 0)

    def test_unlisted_peer_refused_and_not_symmetric(self):
        a, ka = self.device()
        b, kb = self.device({"peers": [a]})
        ca = self.connect(a, ka)
        self.assertAttachRefused(ca, "devices/%s/commands" % b)  # b lists a; a does not list b
        self.assertEqual(self.queue_depth(b), 0)
        # and b loses the right once its peers change
        self.assertEqual(self.gw.rest("PUT", "/v1/devices/" + b, {"peers": []}).status, 200)
        cb = self.connect(b, kb)
        self.assertAttachRefused(cb, "devices/%s/commands" % a)


@unittest.skipUnless(rhea_available(), "node or tests/integration/node_modules/rhea missing (npm install)")
class RheaCommandsTest(CommandsTestCase):

    def test_rhea_device_settles_commands(self):
        dev, key = self.device()
        # commands enqueued by a rhea service (send.js) on devices/D/commands
        mids = ["r-acc", "r-rej", "r-rel", "r-fail", "r-undel"]
        res = run_rhea("send.js", {
            "connection": self.gw.conn_args("cmdonly", CMDONLY_SECRET),
            "address": "devices/%s/commands" % dev,
            "messages": [{"id": mid, "body_b64": base64.b64encode(mid.encode()).decode()} for mid in mids],
            "timeout_ms": 10000})
        self.assertEqual(res["accepted"], mids, res)
        plan = {"r-acc": ["accept"], "r-rej": ["reject"], "r-rel": ["release", "accept"],
                "r-fail": ["modified_failed", "accept"], "r-undel": ["undeliverable"]}
        res = run_rhea("device_commands.js", {
            "connection": self.gw.conn_args(dev, sas_token(dev, key), tls=True),
            "plan": plan, "count": 7, "idle_ms": 3000, "timeout_ms": 15000})
        self.assertIsNone(res["link_error"], res)
        got = [(x["id"], x["delivery_count"], x["outcome"]) for x in res["received"]]
        first = got[:5]
        self.assertEqual([g[0] for g in first], mids, "first deliveries not in queue order: %r" % got)
        self.assertTrue(all(g[1] == 0 for g in first), got)
        self.assertEqual(sorted(got[5:]), [("r-fail", 1, "accept"), ("r-rel", 0, "accept")],
                         "redeliveries after release / modified(delivery-failed): %r" % got)
        for x in res["received"]:
            self.assertEqual(base64.b64decode(x["body_b64"]), x["id"].encode())
        fb = self.reader("feedback").wait_for(lambda m: True, 5, 5)
        self.assertEqual({m.correlation_id: fb_status(m) for m, _ in fb},
                         {"r-acc": "completed", "r-rej": "rejected", "r-rel": "completed",
                          "r-fail": "completed", "r-undel": "undeliverable"})

    def test_rhea_device_lost_connection_redelivers(self):
        dev, key = self.device()
        self.enqueue_ok(dev, ["h1", "h2"])
        conn = self.gw.conn_args(dev, sas_token(dev, key))
        res = run_rhea("device_commands.js", {"connection": conn, "default_outcome": "hold", "count": 2,
                                              "timeout_ms": 10000})
        self.assertEqual([(x["id"], x["delivery_count"]) for x in res["received"]], [("h1", 0), ("h2", 0)], res)
        res = run_rhea("device_commands.js", {"connection": conn, "count": 2, "timeout_ms": 10000})
        self.assertEqual([(x["id"], x["delivery_count"]) for x in res["received"]], [("h1", 1), ("h2", 1)],
                         "redelivery after a rhea device closed with both unsettled: %r" % res)
        fb = self.reader("feedback").wait_for(lambda m: True, 2, 5)
        self.assertEqual(sorted((m.correlation_id, fb_status(m)) for m, _ in fb),
                         [("h1", "completed"), ("h2", "completed")])


if __name__ == "__main__":
    unittest.main()
