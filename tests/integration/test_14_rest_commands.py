"""Commands and notifications over REST (issue #4, CONTRACT.md "REST projection"):

- POST /v1/devices/{id}/commands: 202 {"messageId","status":"queued","expiresAt"} + Location; the
  device receives the body bytes with the request's Content-Type; ?ttl; every error status
  (400 bad ttl/wait, 401, 403, 404, 409, 413, 429 + Retry-After, 503) as JSON {"error","message"};
- ?wait: 200 with the device's response (body, content type, X-Message-Id), 422 when the device
  rejects, 504 when no response comes (and the command then expires unexecuted: a device that
  connects afterwards never gets it), 504 saying the device took it when it accepted silently;
- GET .../commands/{messageId} through queued, delivered, completed, rejected, expired, purged;
- DELETE .../commands purges with feedback `purged`; notifications to a device and to a group;
- the device record's live fields, /healthz, /metrics, HTTPS;
- a client that vanishes while its ?wait request is parked leaves the gateway healthy, and SIGTERM
  afterwards still exits 0 promptly (the harness fails the test on any sanitizer report)."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

from proton import Message

from cmd_helpers import SERVICES, CommandsTestCase, fb_device, fb_status, modified, settle
from rest_helpers import (HttpsGateway, RestAssertions, abort_socket, body_sections, dev_path, iso_ms,
                          raw_request, rest_async)
from warden_harness import ACCEPTED, REJECTED, TestPKI, WardenTestCase, new_id, wait_until

MAX_MESSAGE = 262144  # the harness's [amqp] max_message_size (the default, 256 KiB)


def response_msg(correlation_id, body, content_type=None):
    m = Message(body=body, inferred=isinstance(body, bytes), content_type=content_type)
    m.correlation_id = correlation_id
    return m


class RestCase(CommandsTestCase, RestAssertions):
    """A fresh gateway per test (so that `feedback` holds only this test's records)."""

    def post(self, dev, body=b"payload", ctype="text/plain", query="", token="admin", kind="commands",
             timeout=10.0):
        return self.gw.rest("POST", dev_path(dev, "/" + kind) + query, body, token=token,
                            headers={"Content-Type": ctype} if ctype else None, timeout=timeout)

    def post_ok(self, dev, body=b"payload", **kw):
        r = self.post(dev, body, **kw)
        self.assertEqual(r.status, 202, r)
        return r.json["messageId"]

    def status(self, dev, mid, token="admin"):
        return self.gw.rest("GET", dev_path(dev, "/commands/" + mid), token=token)

    def status_of(self, dev, mid):
        r = self.status(dev, mid)
        self.assertEqual(r.status, 200, r)
        return r.json

    def wait_status(self, dev, mid, want, timeout=4.0):
        last = {}

        def reached():
            last["st"] = self.status_of(dev, mid)
            return last["st"]["status"] == want
        if not wait_until(reached, timeout, interval=0.05):
            self.fail("command %s did not reach status %r within %.1fs: %r" % (mid, want, timeout, last["st"]))
        return last["st"]

    def online(self, dev, key, credit=10):
        """A connected device with credit on `commands`; returns (client, receiver, raw list)."""
        c = self.connect(dev, key)
        rx = self.egress(c, credit=credit)
        raws = []
        rx.h.on_raw = lambda m, raw: raws.append(raw)
        c.pump(0.1)
        return c, rx, raws


class CommandSendTest(RestCase):

    def test_command_202_location_status_and_delivery(self):
        dev, key = self.device()
        payload = b"\x00\x01 opaque \xff command"
        t0 = time.time()
        r = self.post(dev, payload, ctype="application/x-valve", query="?ttl=120")
        self.assertEqual(r.status, 202, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertEqual(set(r.json), {"messageId", "status", "expiresAt"}, r.json)
        mid = r.json["messageId"]
        self.assertIsInstance(mid, str)
        self.assertTrue(mid)
        self.assertEqual(r.json["status"], "queued")
        expires = iso_ms(r.json["expiresAt"]) / 1000.0
        self.assertAlmostEqual(expires, t0 + 120, delta=5, msg="expiresAt is not now + ttl: %r" % r.json)
        self.assertEqual(r.headers.get("location"), "/v1/devices/%s/commands/%s" % (dev, mid), r.headers)

        st = self.gw.rest("GET", r.headers["location"])
        self.assertEqual(st.status, 200, st)
        j = st.json
        self.assertEqual((j["messageId"], j["deviceId"], j["status"]), (mid, dev, "queued"), j)
        self.assertEqual(j["expiresAt"], r.json["expiresAt"])
        self.assertAlmostEqual(iso_ms(j["queuedAt"]) / 1000.0, t0, delta=5)
        self.assertNotIn("response", j)
        for k in ("deliveredAt", "finishedAt"):
            self.assertIn(j.get(k), (None,), "%s set on a queued command: %r" % (k, j))
        self.assertEqual(self.queue_depth(dev), 1)

        fb = self.reader("feedback")
        c, rx, _ = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1, "the device did not receive the REST command")
        [(m, d)] = rx.take()
        self.assertEqual(str(m.id), mid, "the AMQP message-id is not the REST messageId")
        self.assertEqual(m.content_type, "application/x-valve", "Content-Type not kept")
        self.assertEqual(m.body, payload, "payload changed")
        st = self.wait_status(dev, mid, "delivered")
        self.assertIsNotNone(st.get("deliveredAt"), st)
        rx.settle(d, ACCEPTED)
        st = self.wait_status(dev, mid, "completed")
        self.assertIsNotNone(st.get("finishedAt"), st)
        self.assertLessEqual(iso_ms(st["queuedAt"]), iso_ms(st["deliveredAt"]))
        self.assertLessEqual(iso_ms(st["deliveredAt"]), iso_ms(st["finishedAt"]))
        hits = fb.wait_for(lambda m: m.correlation_id == mid, 1, 5)
        self.assertEqual(len(hits), 1, "no feedback for the REST command")
        self.assertEqual((fb_status(hits[0][0]), fb_device(hits[0][0])), ("completed", dev))
        self.assertEqual(self.queue_depth(dev), 0)

    def test_command_body_reaches_the_device_as_a_data_section(self):
        dev, key = self.device()
        mid = self.post_ok(dev, b'{"valve":"open"}', ctype="application/json")
        c, rx, raws = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        rx.settle(d, ACCEPTED)
        self.assertEqual(str(m.id), mid)
        self.assertEqual(m.content_type, "application/json")
        sections = body_sections(raws[0])
        self.assertIn("data", sections, "the REST payload should reach the device as a data section (bytes with "
                                        "a content type); the message's sections are %r" % sections)
        self.assertNotIn("amqp-value", sections, sections)

    def test_default_ttl_and_max_ttl(self):
        dev, _ = self.device()
        t0 = time.time()
        r = self.post(dev)
        self.assertEqual(r.status, 202, r)
        self.assertAlmostEqual(iso_ms(r.json["expiresAt"]) / 1000.0, t0 + 3600, delta=5,
                               msg="without ?ttl the default TTL (1 h) applies: %r" % r.json)
        r = self.post(dev, query="?ttl=%d" % (30 * 86400))
        self.assertEqual(r.status, 202, r)
        self.assertAlmostEqual(iso_ms(r.json["expiresAt"]) / 1000.0, t0 + 7 * 86400, delta=5,
                               msg="?ttl is capped by [commands] max_ttl (7 d): %r" % r.json)

    def test_ttl_expiry_status_feedback_and_never_delivered(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        mid = self.post_ok(dev, query="?ttl=1")
        st = self.wait_status(dev, mid, "expired", timeout=4)
        self.assertIsNotNone(st.get("finishedAt"), st)
        hits = fb.wait_for(lambda m: m.correlation_id == mid, 1, 3)
        self.assertEqual([fb_status(m) for m, _ in hits], ["expired"])
        c, rx, _ = self.online(dev, key)
        self.expect_nothing(rx, 0.7)
        self.assertEqual(self.queue_depth(dev), 0)

    def test_bad_ttl_and_wait_are_400(self):
        dev, _ = self.device()
        for q in ("?ttl=abc", "?ttl=0", "?ttl=-5", "?ttl=", "?ttl=1.5", "?ttl=10s", "?ttl=99999999999999999999",
                  "?wait=abc", "?wait=0", "?wait=-1", "?wait=", "?wait=2.5",
                  "?wait=2&ttl=5", "?ttl=5&wait=2"):
            self.assertError(self.post(dev, query=q), 400, msg="POST commands%s" % q)
        self.assertError(self.post(dev, query="?wait=2", kind="notifications"), 400,
                         msg="a notification gets no response to wait for")
        self.assertError(self.post(dev, query="?ttl=0", kind="notifications"), 400)
        self.assertEqual(self.queue_depth(dev), 0, "a refused request queued something")
        self.assertEqual(self.post(dev, query="?ttl=5").status, 202)

    def test_unknown_device_is_404_bad_id_400(self):
        ghost = new_id("ghost")
        self.assertError(self.post(ghost), 404, "not_found")
        self.assertError(self.post(ghost, kind="notifications"), 404, "not_found")
        self.assertError(self.status(ghost, str(uuid.uuid4())), 404, "not_found")
        self.assertError(self.gw.rest("DELETE", dev_path(ghost, "/commands")), 404, "not_found")
        self.assertError(self.post(ghost, query="?wait=1"), 404, "not_found")
        self.assertError(self.gw.rest("POST", "/v1/devices/bad%20id/commands", b"x"), 400)
        self.assertError(self.gw.rest("POST", "/v1/devices/" + "x" * 129 + "/commands", b"x"), 400)

    def test_disabled_device_is_409(self):
        dev, _ = self.device()
        self.assertEqual(self.gw.device_op(dev, "disable").status, 200)
        self.assertError(self.post(dev), 409)
        self.assertError(self.post(dev, kind="notifications"), 409)
        self.assertError(self.post(dev, query="?wait=1"), 409)
        self.assertEqual(self.queue_depth(dev), 0)
        self.assertEqual(self.gw.device_op(dev, "enable").status, 200)
        self.post_ok(dev)

    def test_too_large_is_413(self):
        dev, key = self.device()
        self.assertError(self.post(dev, b"x" * (MAX_MESSAGE + 1), ctype="application/octet-stream"), 413)
        self.assertError(self.post(dev, b"x" * (MAX_MESSAGE + 1), ctype="application/octet-stream",
                                   kind="notifications"), 413)
        # far more than the socket buffers hold: warden answers before the body is
        # sent and closes, and the client still gets the 413
        self.assertError(self.post(dev, os.urandom(32 * MAX_MESSAGE), ctype="application/octet-stream",
                                   query="?wait=1"), 413)
        self.assertEqual(self.queue_depth(dev), 0)
        # well under the limit is fine, and arrives whole
        big = os.urandom(MAX_MESSAGE - 4096)
        mid = self.post_ok(dev, big, ctype="application/octet-stream")
        c, rx, _ = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        self.assertEqual((str(m.id), m.body), (mid, big))
        rx.settle(d, ACCEPTED)

    def test_body_of_max_message_size_is_not_queue_full(self):
        """A body the HTTP layer admits (exactly max_message_size bytes) whose AMQP encoding is then too
        large must be 413 (too large), not 429 'queue full' with a Retry-After that can never help."""
        dev, _ = self.device()
        for n in (MAX_MESSAGE, MAX_MESSAGE - 16):
            r = self.post(dev, b"y" * n, ctype="application/octet-stream")
            self.assertIn(r.status, (202, 413), "a %d-byte body to an empty queue: %r" % (n, r))
            if r.status == 413:
                self.assertError(r, 413)
                self.assertNotIn("retry-after", r.headers)

    def test_queue_full_is_429_with_retry_after(self):
        dev, key = self.device(body={"queueLimit": 2})
        self.post_ok(dev)
        self.post_ok(dev, kind="notifications")
        r = self.post(dev)
        self.assertError(r, 429)
        self.assertRegex(r.headers.get("retry-after", ""), r"^\d+$", "429 without a Retry-After in seconds")
        self.assertError(self.post(dev, kind="notifications"), 429)
        self.assertEqual(self.queue_depth(dev), 2)
        c, rx, _ = self.online(dev, key)
        self.assertEqual(len(rx.receive(2, timeout=5)), 2)
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 0, 3))
        self.post_ok(dev)

    def test_store_full_is_503(self):
        gw = self.start_gateway(services=SERVICES, sections={"store": {"max_size": "1M"}})
        dev, _ = gw.create_device(new_id("full"), {"queueLimit": 1000})
        statuses = []
        for _ in range(20):
            r = gw.rest("POST", dev_path(dev, "/commands"), os.urandom(200000),
                        headers={"Content-Type": "application/octet-stream"})
            statuses.append(r.status)
            if r.status != 202:
                break
        self.assertEqual(r.status, 503, "filling a 1 MiB store with 200 kB commands: %r then %r" % (statuses, r))
        self.assertError(r, 503)
        self.assertGreaterEqual(statuses.count(202), 1)
        self.assertEqual(gw.rest("GET", "/healthz", token=None).status, 200)
        self.assertEqual(gw.rest("GET", dev_path(dev)).status, 200, "reads must still work with the store full")
        gw.assert_alive()

    def test_dead_lettered_status(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        mid = self.post_ok(dev, b"poison")
        c, rx, _ = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        settle(rx, d, modified(undeliverable=True))
        st = self.wait_status(dev, mid, "dead-lettered")
        self.assertIsNotNone(st.get("finishedAt"), st)
        hits = fb.wait_for(lambda f: f.correlation_id == mid, 1, 5)
        self.assertEqual([fb_status(f) for f, _ in hits], ["undeliverable"])

    def test_accepted_command_survives_kill9(self):
        dev, key = self.device()
        mid = self.post_ok(dev, b"durable", ctype="text/plain", query="?ttl=300")
        self.gw.kill9()
        self.gw.start()
        self.assertEqual(self.status_of(dev, mid)["status"], "queued")
        self.assertEqual(self.queue_depth(dev), 1)
        c, rx, _ = self.online(dev, key)
        got = rx.receive(1, timeout=5)
        self.assertEqual([(str(m.id), m.body, m.content_type) for m in got], [(mid, b"durable", "text/plain")],
                         "a command answered 202 must survive kill -9")

    def test_401_and_403(self):
        dev, _ = self.device()
        mid = self.post_ok(dev)
        for method, path in (("POST", dev_path(dev, "/commands")), ("POST", dev_path(dev, "/notifications")),
                             ("GET", dev_path(dev, "/commands/" + mid)), ("DELETE", dev_path(dev, "/commands")),
                             ("POST", "/v1/groups/g1/notifications")):
            body = b"x" if method == "POST" else None
            r = self.gw.rest(method, path, body, token=None)
            self.assertError(r, 401, msg="%s %s without a token" % (method, path))
            self.assertIn("Bearer", r.headers.get("www-authenticate", ""), r.headers)
            self.assertError(self.gw.rest(method, path, body, token="not-a-valid-secret-at-all"), 401)
            self.assertError(self.gw.rest(method, path, body, token=SERVICES["noscope"][0]), 403,
                             msg="%s %s with registry:read only" % (method, path))
        self.assertError(self.post(dev, token=SERVICES["notifonly"][0]), 403)
        self.assertError(self.post(dev, token=SERVICES["cmdonly"][0], kind="notifications"), 403)
        self.assertEqual(self.post(dev, token=SERVICES["cmdonly"][0]).status, 202)
        self.assertEqual(self.post(dev, token=SERVICES["notifonly"][0], kind="notifications").status, 202)
        self.assertEqual(self.status(dev, mid, token=SERVICES["cmdonly"][0]).status, 200)
        self.assertEqual(self.queue_depth(dev), 3)

    def test_status_404_for_unknown_or_other_devices_command(self):
        dev, _ = self.device()
        other, _ = self.device()
        mid = self.post_ok(dev)
        self.assertError(self.status(dev, str(uuid.uuid4())), 404, "not_found")
        self.assertError(self.status(other, mid), 404, "not_found")
        self.assertError(self.status(dev, "m" * 300), 404)
        self.assertEqual(self.status(dev, mid).status, 200)


class PurgeAndNotifyTest(RestCase):

    def test_purge_with_feedback(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        mids = [self.post_ok(dev, ("c%d" % i).encode()) for i in range(3)]
        self.post_ok(dev, b"n", kind="notifications")
        self.assertEqual(self.queue_depth(dev), 4)
        r = self.gw.rest("DELETE", dev_path(dev, "/commands"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"purged": 4}, r)
        self.assertEqual(self.queue_depth(dev), 0)
        hits = fb.wait_for(lambda m: fb_status(m) == "purged", 3, 5)
        self.assertEqual(sorted(m.correlation_id for m, _ in hits), sorted(mids))
        for m, _ in hits:
            self.assertEqual(fb_device(m), dev)
        fb.settle_for(0.3)
        self.assertEqual(len(fb.got), 3, "feedback beyond one `purged` per command (none for notifications): %r"
                         % [(m.correlation_id, fb_status(m)) for m, _ in fb.got])
        for mid in mids:
            st = self.status_of(dev, mid)
            self.assertEqual(st["status"], "purged", st)
            self.assertIsNotNone(st.get("finishedAt"), st)
        c, rx, _ = self.online(dev, key)
        self.expect_nothing(rx, 0.5)
        r = self.gw.rest("DELETE", dev_path(dev, "/commands"))
        self.assertEqual((r.status, r.json), (200, {"purged": 0}), r)

    def test_purge_spares_what_the_device_holds_unsettled_or_not(self):
        """Purge while one command is out at the device: the count and the feedback agree."""
        dev, key = self.device()
        fb = self.reader("feedback")
        first = self.post_ok(dev, b"first")
        second = self.post_ok(dev, b"second")
        c, rx, _ = self.online(dev, key, credit=1)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        r = self.gw.rest("DELETE", dev_path(dev, "/commands"))
        self.assertEqual(r.status, 200, r)
        n = r.json["purged"]
        self.assertIn(n, (1, 2), r)
        hits = fb.wait_for(lambda m: fb_status(m) == "purged", n, 5)
        self.assertEqual(len(hits), n, "purged %d, but %d `purged` feedback messages" % (n, len(hits)))
        self.assertIn(second, [m.correlation_id for m, _ in hits])
        self.assertEqual(self.status_of(dev, second)["status"], "purged")
        [(m, d)] = rx.take()
        self.assertEqual(str(m.id), first)
        rx.settle(d, ACCEPTED)
        rx.flow(5)
        self.expect_nothing(rx, 0.5)

    def test_device_notification(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        t0 = time.time()
        r = self.post(dev, b"fyi", ctype="text/plain", kind="notifications", query="?ttl=60")
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json.get("status"), "queued", r.json)
        self.assertAlmostEqual(iso_ms(r.json["expiresAt"]) / 1000.0, t0 + 60, delta=5)
        c, rx, _ = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        self.assertEqual((m.body, m.content_type), (b"fyi", "text/plain"))
        if r.json.get("messageId"):
            self.assertEqual(str(m.id), r.json["messageId"])
        rx.settle(d, ACCEPTED)
        fb.settle_for(0.5)
        self.assertEqual(fb.got, [], "a notification got feedback")

    def test_group_notification_reaches_enabled_members_with_room(self):
        group = new_id("grp")
        a, ka = self.device({"groups": [group]})
        b, kb = self.device({"groups": [group, "other"]})
        disabled, _ = self.device({"groups": [group]})
        full, _ = self.device({"groups": [group], "queueLimit": 1})
        outsider, ko = self.device({"groups": ["other"]})
        self.assertEqual(self.gw.device_op(disabled, "disable").status, 200)
        self.post_ok(full, b"filler")
        r = self.gw.rest("POST", "/v1/groups/%s/notifications" % group, b"all hands",
                         headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json.get("devices"), 2, "members reached (a, b; not disabled, not full): %r" % r.json)
        self.assertEqual(r.json.get("status"), "queued", r.json)
        for dev, key in ((a, ka), (b, kb)):
            c, rx, _ = self.online(dev, key)
            self.assertEqual(rx.wait_messages(1, 5), 1, "group member %s got nothing" % dev)
            [(m, d)] = rx.take()
            self.assertEqual((m.body, m.content_type), (b"all hands", "text/plain"))
            rx.settle(d, ACCEPTED)
            c.close()
        self.assertEqual(self.queue_depth(full), 1)
        self.assertEqual(self.queue_depth(disabled), 0)
        c, rx, _ = self.online(outsider, ko)
        self.expect_nothing(rx, 0.3)
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications" % new_id("nogroup"), b"x"), 404,
                         "not_found")
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications" % group, b"x",
                                      token=SERVICES["cmdonly"][0]), 403)
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications?wait=2" % group, b"x"), 400)
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications" % group, b"x" * (MAX_MESSAGE + 1)), 413)
        self.assertError(self.gw.rest("POST", "/v1/groups/bad%20group/notifications", b"x"), 400)


class RecordTest(RestCase):

    def test_record_live_fields(self):
        dev, key = self.device()
        j = self.gw.rest("GET", dev_path(dev)).json
        for k in ("id", "enabled", "groups", "peers", "queueLimit", "connected", "lastSeen", "queueDepth"):
            self.assertIn(k, j, "device record lacks %r: %r" % (k, j))
        self.assertEqual((j["connected"], j["queueDepth"]), (False, 0), j)
        self.post_ok(dev)
        self.post_ok(dev)
        self.assertEqual(self.queue_depth(dev), 2)
        t0 = time.time()
        c = self.connect(dev, key)
        c.pump(0.1)
        j = self.gw.rest("GET", dev_path(dev)).json
        self.assertTrue(j["connected"], j)
        self.assertIsNotNone(j["lastSeen"], j)
        self.assertAlmostEqual(iso_ms(j["lastSeen"]) / 1000.0, t0, delta=5)
        c.close()
        self.assertTrue(wait_until(lambda: not self.gw.rest("GET", dev_path(dev)).json["connected"], 3))
        self.assertEqual(self.gw.rest("GET", dev_path(dev)).json["queueDepth"], 2)

    def test_last_seen_outlives_the_connection(self):
        """lastSeen says when a sleeping device was last heard from: it matters most while the device
        is NOT connected, so it must survive the disconnect."""
        dev, key = self.device()
        t0 = time.time()
        c = self.connect(dev, key)
        c.pump(0.1)
        seen = self.gw.rest("GET", dev_path(dev)).json["lastSeen"]
        self.assertIsNotNone(seen)
        c.close()
        self.assertTrue(wait_until(lambda: not self.gw.rest("GET", dev_path(dev)).json["connected"], 3))
        j = self.gw.rest("GET", dev_path(dev)).json
        self.assertIsNotNone(j["lastSeen"], "lastSeen went back to null when the device disconnected: %r" % j)
        self.assertAlmostEqual(iso_ms(j["lastSeen"]) / 1000.0, t0, delta=5)
        listed = [d for d in self.gw.rest("GET", "/v1/devices").json["devices"] if d["id"] == dev]
        self.assertIsNotNone(listed[0]["lastSeen"], listed)

    def test_paged_list_with_live_fields(self):
        dev, _ = self.device()
        self.post_ok(dev)
        self.post_ok(dev)
        ids = {dev} | {self.device()[0] for _ in range(4)}
        seen, cursor, pages = [], None, 0
        while True:
            q = "?limit=2" + ("&cursor=" + cursor if cursor else "")
            r = self.gw.rest("GET", "/v1/devices" + q)
            self.assertEqual(r.status, 200, r)
            self.assertLessEqual(len(r.json["devices"]), 2)
            seen += [d["id"] for d in r.json["devices"]]
            for d in r.json["devices"]:
                self.assertIn("queueDepth", d)
                self.assertIn("connected", d)
            cursor = r.json["nextCursor"]
            pages += 1
            if cursor is None or pages > 10:
                break
        self.assertIsNone(cursor)
        self.assertEqual(sorted(seen), sorted(ids), "paging lost or repeated devices")
        self.assertEqual([d for d in self.gw.rest("GET", "/v1/devices").json["devices"] if d["id"] == dev][0]
                         ["queueDepth"], 2)
        self.assertError(self.gw.rest("GET", "/v1/devices?limit=0"), 400)
        self.assertError(self.gw.rest("GET", "/v1/devices?limit=x"), 400)

    def test_healthz_needs_no_token(self):
        r = self.gw.rest("GET", "/healthz", token=None)
        self.assertEqual(r.status, 200, r)

    def test_metrics(self):
        r = self.gw.rest("GET", "/metrics")
        if r.status == 404 or (r.status == 400 and r.json and r.json.get("message") == "invalid input"):
            self.skipTest("GET /metrics not implemented yet (%r)" % r)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"), r.headers)
        text = r.body.decode("utf-8")
        self.assertRegex(text, r"(?m)^# TYPE \w+ (counter|gauge|histogram|summary|untyped)$")
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfa]+( \d+)?$", line)
        self.assertError(self.gw.rest("GET", "/metrics", token=None), 401)
        self.assertEqual(self.gw.rest("GET", "/metrics", token=SERVICES["noscope"][0]).status, 200,
                         "any valid token may read /metrics")


class WaitTest(RestCase):

    def test_wait_returns_the_device_response(self):
        dev, key = self.device()
        c, rx, _ = self.online(dev, key)
        t0 = time.monotonic()
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"status?",
                         headers={"Content-Type": "text/plain"}, timeout=20)
        self.assertEqual(rx.wait_messages(1, 5), 1, "the waiting command did not reach the connected device")
        [(m, d)] = rx.take()
        self.assertEqual((m.body, m.content_type), (b"status?", "text/plain"))
        mid = str(m.id)
        rx.settle(d, ACCEPTED)
        s = c.sender("responses")
        self.assertEqual(s.send(response_msg(mid, b'{"ok": true, "t": 21.5}', "application/json")), ACCEPTED)
        r = fut.result(15)
        self.assertLess(time.monotonic() - t0, 8, "the response took the wait's full length")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b'{"ok": true, "t": 21.5}')
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertEqual(r.headers.get("x-message-id"), mid, r.headers)
        st = self.wait_status(dev, mid, "completed")
        resp = st.get("response")
        self.assertIsInstance(resp, dict, "status lacks the response: %r" % st)
        self.assertEqual(resp.get("contentType"), "application/json", resp)
        self.assertEqual(resp.get("body"), '{"ok": true, "t": 21.5}', resp)
        self.assertNotIn("bodyBase64", resp)
        self.assertIsNotNone(resp.get("receivedAt"), resp)
        iso_ms(resp["receivedAt"])

    def test_wait_binary_response_and_base64_in_status(self):
        dev, key = self.device()
        c, rx, _ = self.online(dev, key)
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"dump",
                         headers={"Content-Type": "application/octet-stream"}, timeout=20)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        rx.settle(d, ACCEPTED)
        blob = b"\x00\x01\x02\xfe\xff binary"
        self.assertEqual(c.sender("responses").send(response_msg(m.id, blob, "application/octet-stream")), ACCEPTED)
        r = fut.result(15)
        self.assertEqual((r.status, r.body), (200, blob), r)
        self.assertEqual(r.headers.get("content-type"), "application/octet-stream")
        resp = self.wait_status(dev, str(m.id), "completed").get("response") or {}
        self.assertEqual(base64.b64decode(resp.get("bodyBase64", "")), blob, resp)
        self.assertNotIn("body", resp)

    def test_wait_for_a_device_that_connects_during_the_wait(self):
        dev, key = self.device()
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"wake up",
                         headers={"Content-Type": "text/plain"}, timeout=20)
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 1, 3), "the waiting command was not queued")
        self.assertFalse(fut.done(), "answered before the device could respond: %r" % (fut.done() and fut.result()))
        c, rx, _ = self.online(dev, key)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        rx.settle(d, ACCEPTED)
        c.sender("responses").send(response_msg(m.id, b"awake", "text/plain"))
        r = fut.result(15)
        self.assertEqual((r.status, r.body), (200, b"awake"), r)
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"), r.headers)

    def test_wait_rejected_by_device_is_422(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        c, rx, _ = self.online(dev, key)
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"self-destruct", timeout=20)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        rx.settle(d, REJECTED)
        r = fut.result(15)
        self.assertError(r, 422, "rejected")
        self.assertEqual(r.json["error"], "rejected")
        self.assertEqual(self.wait_status(dev, str(m.id), "rejected")["messageId"], str(m.id))
        hits = fb.wait_for(lambda f: f.correlation_id == str(m.id), 1, 5)
        self.assertEqual([fb_status(f) for f, _ in hits], ["rejected"])

    def test_wait_dead_lettered_by_device_is_422(self):
        dev, key = self.device()
        c, rx, _ = self.online(dev, key)
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"cannot do", timeout=20)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        settle(rx, d, modified(undeliverable=True))
        r = fut.result(15)
        self.assertError(r, 422)

    def test_wait_response_sent_before_the_settlement(self):
        dev, key = self.device()
        c, rx, _ = self.online(dev, key)
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=10"), b"quick", timeout=20)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        self.assertEqual(c.sender("responses").send(response_msg(m.id, "a string value", "text/plain")), ACCEPTED)
        r = fut.result(15)
        rx.settle(d, ACCEPTED)
        self.assertEqual((r.status, r.body), (200, b"a string value"), r)
        self.assertEqual(self.wait_status(dev, str(m.id), "completed")["response"]["body"], "a string value")

    def test_wait_timeout_504_then_the_command_expires_unexecuted(self):
        dev, key = self.device()
        fb = self.reader("feedback")
        t0 = time.monotonic()
        r = self.post(dev, b"anyone?", query="?wait=2", timeout=15)
        took = time.monotonic() - t0
        self.assertError(r, 504)
        self.assertGreaterEqual(took, 1.8, "answered 504 before the wait was over (%.2fs)" % took)
        self.assertLess(took, 5, "504 came %.2fs after a 2 s wait" % took)
        mid = re.search(r"command (\S+)", r.json["message"])
        self.assertIsNotNone(mid, "the 504 message should name the command: %r" % r.json)
        mid = mid.group(1)
        self.assertIn("expire", r.json["message"], r.json)
        # the device wakes up right after the 504: it must never get the command
        c, rx, _ = self.online(dev, key)
        self.expect_nothing(rx, 1.5)
        st = self.wait_status(dev, mid, "expired", timeout=3)
        self.assertIsNone(st.get("deliveredAt"), st)
        hits = fb.wait_for(lambda m: m.correlation_id == mid, 1, 3)
        self.assertEqual([fb_status(m) for m, _ in hits], ["expired"], "feedback for the timed-out command")
        self.assertEqual(self.queue_depth(dev), 0)

    def test_wait_504_says_the_device_took_the_command(self):
        dev, key = self.device()
        c, rx, _ = self.online(dev, key)
        fut = rest_async(self.gw, "POST", dev_path(dev, "/commands?wait=2"), b"do it quietly", timeout=15)
        self.assertEqual(rx.wait_messages(1, 5), 1)
        [(m, d)] = rx.take()
        rx.settle(d, ACCEPTED)  # accepted, but no response ever
        r = fut.result(10)
        self.assertError(r, 504)
        self.assertIn("took", r.json["message"], "the 504 should say the device took the command: %r" % r.json)
        self.assertNotIn("expired unexecuted", r.json["message"], r.json)
        self.assertEqual(self.status_of(dev, str(m.id))["status"], "completed")


class ParkedClientTest(RestCase):
    """Clients that go away while their ?wait request is parked."""

    def park(self, dev, wait=10):
        return raw_request(self.gw.http_port, "POST", dev_path(dev, "/commands?wait=%d" % wait), self.gw.token,
                           b"parked", {"Content-Type": "text/plain"})

    def assertHealthy(self, dev, key):
        self.assertEqual(self.gw.rest("GET", "/healthz", token=None).status, 200)
        self.assertEqual(self.gw.rest("GET", "/v1/devices").status, 200)
        other, okey = self.device()
        self.post_ok(other, b"after")
        # a full wait round trip still works
        c, rx, _ = self.online(other, okey)
        fut = rest_async(self.gw, "POST", dev_path(other, "/commands?wait=10"), b"ping", timeout=20)
        got = rx.receive(2, timeout=5)
        self.assertEqual(len(got), 2, "commands for another device after the abandoned requests")
        c.sender("responses").send(response_msg(got[1].id, b"pong", "text/plain"))
        r = fut.result(15)
        self.assertEqual((r.status, r.body), (200, b"pong"), r)
        c.close()

    def sigterm(self, limit=5.0):
        t0 = time.monotonic()
        rc = self.gw.terminate(timeout=15)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, "warden did not exit 0 on SIGTERM; stderr:\n%s" % self.gw.stderr()[-3000:])
        self.assertLess(took, limit, "SIGTERM took %.2fs to stop warden" % took)

    def tearDown(self):
        pass  # these tests stop the gateway themselves

    def test_client_disconnects_while_parked_then_sigterm(self):
        dev, key = self.device()
        fin = self.park(dev, 10)
        rst = self.park(dev, 10)
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 2, 3), "the parked commands were not queued")
        abort_socket(fin)
        abort_socket(rst, reset=True)
        time.sleep(0.3)
        self.gw.assert_alive()
        self.assertHealthy(dev, key)
        self.gw.assert_alive()
        self.sigterm()

    def test_abandoned_wait_expires_and_many_abandoned_then_sigterm(self):
        dev, key = self.device()
        s = self.park(dev, 1)
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 1, 3))
        abort_socket(s)
        # its wait runs out after the client left: the answer has nowhere to go
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 0, 4), "the abandoned command did not expire")
        time.sleep(0.3)
        self.gw.assert_alive()
        socks = [self.park(dev, 10) for _ in range(20)]
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 20, 5), "20 parked commands not queued")
        for i, s in enumerate(socks):
            abort_socket(s, reset=bool(i % 2))
        self.assertHealthy(dev, key)
        self.sigterm()

    def test_sigterm_answers_a_parked_request(self):
        dev, _ = self.device()
        s = self.park(dev, 30)
        self.assertTrue(wait_until(lambda: self.queue_depth(dev) == 1, 3))
        s.settimeout(8)
        os.kill(self.gw.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        finally:
            s.close()
        status = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        self.assertIsNotNone(status, "the parked client got no answer at SIGTERM: %r" % data[:300])
        self.assertIn(int(status.group(1)), (503, 504), data[:300])
        self.assertLess(time.monotonic() - t0, 5)
        self.sigterm()


class HttpsTest(WardenTestCase, RestAssertions):

    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix="warden-https-")
        cls.addClassCleanup(shutil.rmtree, cls.scratch, True)
        cls.pki = TestPKI(cls.scratch)
        gw = HttpsGateway(cls.pki.ca_pem, sections={"http": {"tls_cert": cls.pki.server_pem,
                                                             "tls_key": cls.pki.server_key}})
        cls.addClassCleanup(gw.cleanup)
        gw.start()
        cls.gw = gw

    def tearDown(self):
        self.gw.assert_alive()

    def curl(self, *args):
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", self.pki.ca_pem,
                            "--resolve", "localhost:%d:127.0.0.1" % self.gw.http_port] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def test_https_round_trip(self):
        self.assertIn("listening https 127.0.0.1:%d" % self.gw.http_port, self.gw.stderr())
        dev, key = self.gw.create_device()
        url = "https://localhost:%d" % self.gw.http_port
        rc, out, err = self.curl(url + "/healthz")
        self.assertEqual(rc, 0, err)
        rc, out, err = self.curl("-X", "POST", "-H", "Authorization: Bearer " + self.gw.token,
                                 "-H", "Content-Type: text/plain", "--data-binary", "over tls",
                                 "-w", "\n%{http_code}", url + dev_path(dev, "/commands?ttl=60"))
        self.assertEqual(rc, 0, err)
        body, code = out.rsplit("\n", 1)
        self.assertEqual(code, "202", out)
        mid = json.loads(body)["messageId"]
        r = self.gw.rest("GET", dev_path(dev, "/commands/" + mid))
        self.assertEqual((r.status, r.json["status"]), (200, "queued"), r)
        c = self.device_client(self.gw, dev, key)
        got = c.receiver("commands", credit=5).receive(1, timeout=5)
        self.assertEqual([(str(m.id), m.body, m.content_type) for m in got], [(mid, b"over tls", "text/plain")])
        # without the CA, curl refuses; plain HTTP on the HTTPS port gets no REST answer
        r = subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve",
                            "localhost:%d:127.0.0.1" % self.gw.http_port, url + "/healthz"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertNotEqual(r.returncode, 0, "curl trusted warden's test certificate without its CA")
        r = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:%d/healthz" % self.gw.http_port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertNotEqual(r.stdout.decode().strip(), "200", "plain HTTP answered on the HTTPS port")


if __name__ == "__main__":
    unittest.main()
