"""Telemetry as Server-Sent Events (issue #4, CONTRACT.md "REST projection"):
GET /v1/telemetry/stream[?device=ID], scope telemetry:read.

Each telemetry message is `event: telemetry`, `id: <sequence>`, `data: {"deviceId", "sequenceNumber",
"enqueuedTime", "contentType", "body" | "bodyBase64"}`: the payload as text for application/json and
text/* payloads, otherwise base64. Without Last-Event-ID the stream is live from "now"; with it, it
resumes after that id. Idle streams get a comment line every 15 s. Checked: events and their fields
(against what a service reads from the durable log), the device filter, resume, keep-alives, scope and
input errors, many events in order, and clients that vanish or a SIGTERM with streams open."""

import base64
import time
import unittest

from proton import Message

from rest_helpers import RestAssertions, SseStream, iso_ms
from warden_harness import (ACCEPTED, ANN_SEQUENCE, NOSCOPE_SECRET, WardenTestCase, new_id, wait_until)

KEEPALIVE_S = 15.0


def tm(body, content_type=None, msg_id=None):
    m = Message(body=body, inferred=isinstance(body, bytes), content_type=content_type)
    if msg_id is not None:
        m.id = msg_id
    return m


def payload_of(ev):
    """The payload bytes an event carries (text or base64)."""
    j = ev["json"]
    if "body" in j:
        return j["body"].encode("utf-8")
    return base64.b64decode(j["bodyBase64"])


class SseCase(WardenTestCase, RestAssertions):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def stream(self, query="", token="admin", last_event_id=None):
        s = SseStream(self.gw.http_port, self.gw.token if token == "admin" else token, query=query,
                      last_event_id=last_event_id)
        self.addCleanup(s.close)
        return s

    def open_ok(self, query="", **kw):
        s = self.stream(query, **kw)
        self.assertEqual(s.status, 200, s.body)
        self.assertTrue(s.headers.get("content-type", "").startswith("text/event-stream"), s.headers)
        return s

    def device(self):
        dev, key = self.gw.create_device(new_id("sse"))
        c = self.device_client(self.gw, dev, key)
        return dev, c, c.sender("telemetry")

    def send(self, sender, *msgs):
        for m in msgs:
            self.assertEqual(sender.send(m), ACCEPTED)

    def events_of(self, s, dev, n, timeout=5.0):
        got = s.collect(lambda e: e["json"] and e["json"].get("deviceId") == dev, n, timeout)
        return [e for e in got if e["json"] and e["json"].get("deviceId") == dev]


class StreamTest(SseCase):

    def test_event_fields_and_body_encodings(self):
        s = self.open_ok()
        dev, c, tx = self.device()
        t0 = time.time()
        msgs = [(b'{"t": 21.5, "unit": "\xc2\xb0C"}', "application/json"),
                (b"plain text line", "text/plain; charset=utf-8"),
                (b"\x00\x01\x02\xff binary", "application/octet-stream"),
                (b"\x89PNG no type", None)]
        self.send(tx, *[tm(b, ct, "m%d" % i) for i, (b, ct) in enumerate(msgs)])
        evs = self.events_of(s, dev, len(msgs))
        self.assertEqual(len(evs), len(msgs), "events for %d telemetry messages: %r" % (len(msgs), evs))
        seqs = []
        for ev, (body, ctype) in zip(evs, msgs):
            self.assertEqual(ev.get("event"), "telemetry", ev)
            j = ev["json"]
            self.assertIsInstance(j, dict, ev)
            self.assertEqual(j["deviceId"], dev)
            self.assertIsInstance(j["sequenceNumber"], int, j)
            self.assertEqual(ev.get("id"), str(j["sequenceNumber"]), "SSE id is not the sequence number: %r" % ev)
            seqs.append(j["sequenceNumber"])
            self.assertAlmostEqual(iso_ms(j["enqueuedTime"]) / 1000.0, t0, delta=10)
            self.assertEqual(payload_of(ev), body, "payload changed: %r" % ev)
            if ctype is not None:
                self.assertEqual(j.get("contentType"), ctype, j)
            if ctype and (ctype.startswith("application/json") or ctype.startswith("text/")):
                self.assertIn("body", j, "a %s payload should be text in `body`: %r" % (ctype, j))
                self.assertNotIn("bodyBase64", j)
            else:
                self.assertIn("bodyBase64", j, "a %s payload should be base64 in `bodyBase64`: %r" % (ctype, j))
                self.assertNotIn("body", j)
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), len(seqs))
        # the ids are the durable log's sequence numbers, as a service reading the log sees them
        svc = self.service_client(self.gw)
        seen = self.read_group(self.gw, new_id("grp"), want_ids=["m%d" % i for i in range(len(msgs))], client=svc)
        self.assertEqual([m.annotations.get(ANN_SEQUENCE) for m in seen], seqs)

    def test_text_payload_that_is_not_utf8_arrives_intact(self):
        s = self.open_ok()
        dev, c, tx = self.device()
        self.send(tx, tm(b"caf\xe9 latin-1", "text/plain"), tm(b'{"bad": "\xff"}', "application/json"))
        evs = self.events_of(s, dev, 2)
        self.assertEqual([payload_of(e) for e in evs], [b"caf\xe9 latin-1", b'{"bad": "\xff"}'], evs)

    def test_live_from_now_without_last_event_id(self):
        dev, c, tx = self.device()
        self.send(tx, tm(b"before", "text/plain"))
        s = self.open_ok("?device=" + dev)
        self.assertEqual(s.drain(0.5), [], "history was streamed without Last-Event-ID")
        self.send(tx, tm(b"after", "text/plain"))
        evs = self.events_of(s, dev, 1)
        self.assertEqual([payload_of(e) for e in evs], [b"after"])

    def test_device_filter(self):
        a, ca, ta = self.device()
        b, cb, tb = self.device()
        s = self.open_ok("?device=" + a)
        everything = self.open_ok()
        for i in range(3):
            self.send(tb, tm(("b%d" % i).encode(), "text/plain"))
            self.send(ta, tm(("a%d" % i).encode(), "text/plain"))
        got = s.collect(lambda e: True, 3, 5) + s.drain(0.5)
        self.assertEqual([(e["json"]["deviceId"], payload_of(e)) for e in got],
                         [(a, b"a0"), (a, b"a1"), (a, b"a2")], "the filtered stream")
        allev = everything.collect(lambda e: e["json"]["deviceId"] in (a, b), 6, 5)
        self.assertEqual(sorted(payload_of(e) for e in allev if e["json"]["deviceId"] in (a, b)),
                         [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"])
        self.assertEqual(self.stream("?device=" + new_id("nobody")).status, 200,
                         "a filter naming a device with no telemetry (or none at all) is still a stream")

    def test_device_filter_percent_encoded(self):
        """Ids may hold ':' (CONTRACT.md: [A-Za-z0-9._:-]); a web page building the query with
        encodeURIComponent/URLSearchParams sends it as %3A. The query value is URL-decoded, like path
        segments and ?cursor= are."""
        dev, key = self.gw.create_device("sse:%s.x" % new_id("enc"))
        c = self.device_client(self.gw, dev, key)
        tx = c.sender("telemetry")
        s = self.stream("?device=" + dev.replace(":", "%3A"))
        self.assertEqual(s.status, 200, "?device=%s: %r" % (dev.replace(":", "%3A"), s.body))
        self.send(tx, tm(b"encoded", "text/plain"))
        self.assertEqual([payload_of(e) for e in s.collect(lambda e: True, 1, 5)], [b"encoded"])

    def test_resume_with_last_event_id(self):
        dev, c, tx = self.device()
        s = self.open_ok("?device=" + dev)
        self.send(tx, tm(b"e1", "text/plain"), tm(b"e2", "text/plain"))
        first = self.events_of(s, dev, 2)
        self.assertEqual([payload_of(e) for e in first], [b"e1", b"e2"])
        s.close()
        # missed while disconnected
        self.send(tx, tm(b"e3", "text/plain"), tm(b"e4", "text/plain"))
        r = self.open_ok("?device=" + dev, last_event_id=first[1]["id"])
        got = r.collect(lambda e: True, 2, 5)
        self.assertEqual([payload_of(e) for e in got], [b"e3", b"e4"], "resume after e2")
        self.send(tx, tm(b"e5", "text/plain"))
        got = r.collect(lambda e: True, 1, 5)
        self.assertEqual([payload_of(e) for e in got], [b"e5"], "the resumed stream goes on live")
        self.assertEqual(r.drain(0.3), [])
        # from an earlier id: everything after it, no duplicates
        r2 = self.open_ok("?device=" + dev, last_event_id=first[0]["id"])
        got = r2.collect(lambda e: True, 4, 5)
        self.assertEqual([payload_of(e) for e in got], [b"e2", b"e3", b"e4", b"e5"])
        ids = [int(e["id"]) for e in got]
        self.assertEqual(ids, sorted(set(ids)))

    def test_unusable_last_event_id_streams_live(self):
        dev, c, tx = self.device()
        self.send(tx, tm(b"old", "text/plain"))
        for bad in ("abc", "-1", "99999999999", "18446744073709551616", ""):
            s = self.open_ok("?device=" + dev, last_event_id=bad)
            self.send(tx, tm(("new-" + bad).encode(), "text/plain"))
            got = s.collect(lambda e: True, 1, 5)
            self.assertEqual([payload_of(e) for e in got], [("new-" + bad).encode()],
                             "Last-Event-ID %r: expected a live stream" % bad)
            s.close()

    def test_many_events_in_order(self):
        dev, c, tx = self.device()
        s = self.open_ok("?device=" + dev)
        n = 300
        for i in range(n):
            tx.send_async(tm(("n%04d" % i).encode(), "text/plain"))
        c.wait(lambda: len(tx.h.outcomes) >= n, 20)
        got = s.collect(lambda e: True, n, 20)
        self.assertEqual([payload_of(e) for e in got], [("n%04d" % i).encode() for i in range(n)])
        ids = [int(e["id"]) for e in got]
        self.assertEqual(ids, list(range(ids[0], ids[0] + n)), "ids of one device's burst, alone on the log")

    def test_auth_scope_and_input(self):
        self.assertError(self.stream(token=None).response(), 401)
        self.assertError(self.stream(token="wrong-secret-for-the-stream").response(), 401)
        self.assertError(self.stream(token=NOSCOPE_SECRET).response(), 403)
        self.assertError(self.stream("?device=bad%20id").response(), 400)
        self.assertError(self.stream("?device=" + "x" * 129).response(), 400)
        self.assertEqual(self.gw.rest("POST", "/v1/telemetry/stream", b"x").status, 405)
        self.assertEqual(self.open_ok(token="backend-secret-for-tests").status, 200, "telemetry:read suffices")

    def test_client_disconnects_mid_stream(self):
        dev, c, tx = self.device()
        streams = [self.open_ok("?device=" + dev) for _ in range(5)] + [self.open_ok()]
        self.send(tx, tm(b"hello", "text/plain"))
        for s in streams:
            self.assertEqual(len(s.collect(lambda e: e["json"]["deviceId"] == dev, 1, 5)), 1)
        for s in streams:
            s.close()
        for i in range(50):  # events for streams that are gone
            tx.send_async(tm(b"x" * 1000, "text/plain"))
        c.wait(lambda: len(tx.h.outcomes) >= 51, 10)
        time.sleep(0.3)
        self.gw.assert_alive()
        s = self.open_ok("?device=" + dev)
        self.send(tx, tm(b"still", "text/plain"))
        self.assertEqual([payload_of(e) for e in s.collect(lambda e: True, 1, 5)], [b"still"])


class KeepAliveAndShutdownTest(WardenTestCase, RestAssertions):

    def test_keepalive_comment_within_15_seconds(self):
        """An idle stream gets a comment line within 15 s (plus scheduling slack) of opening - whenever it
        is opened relative to the gateway's own keep-alive timer (here: right after start)."""
        gw = self.start_gateway()
        s = SseStream(gw.http_port, gw.token, query="?device=" + new_id("idle"))
        self.addCleanup(s.close)
        opened = time.monotonic()
        self.assertEqual(s.status, 200)
        limit = KEEPALIVE_S + 3.0
        wait_until(lambda: s.comments or s.ended.is_set(), limit, interval=0.1)
        self.assertFalse(s.ended.is_set(), "the idle stream ended: %r" % s.error)
        self.assertTrue(s.comments, "no keep-alive comment on an idle stream within %.0f s of opening it (want "
                                    "one every %.0f s)" % (limit, KEEPALIVE_S))
        first = s.comments[0][0] - opened
        self.assertLessEqual(first, KEEPALIVE_S + 2.0,
                             "the first keep-alive came %.1f s after the stream opened (want every %.0f s)"
                             % (first, KEEPALIVE_S))
        self.assertEqual(s.events.qsize(), 0)

    def test_sigterm_with_open_streams(self):
        gw = self.start_gateway()
        dev, key = gw.create_device(new_id("sse"))
        streams = [SseStream(gw.http_port, gw.token, query="?device=" + dev) for _ in range(3)]
        streams.append(SseStream(gw.http_port, gw.token))
        for s in streams:
            self.addCleanup(s.close)
            self.assertEqual(s.status, 200)
        c = self.device_client(gw, dev, key)
        self.assertEqual(c.sender("telemetry").send(tm(b"last words", "text/plain")), ACCEPTED)
        for s in streams:
            self.assertIsNotNone(s.next(5))
        c.close()
        t0 = time.monotonic()
        rc = gw.terminate(timeout=15)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, gw.stderr()[-3000:])
        self.assertLess(took, 5.0, "SIGTERM with open streams took %.1f s" % took)
        for s in streams:
            self.assertTrue(s.ended.wait(5), "a stream stayed open after warden stopped")


if __name__ == "__main__":
    unittest.main()
