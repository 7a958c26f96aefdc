"""Limits that protect the gateway from its peers (CONTRACT "Connections"): failed logins per
source address, the SASL deadline, links and sessions per connection, connections per source
address, the frame size, and garbage on the wire. Each limit is configured low so that a test
fails if the limit were missing, and every test ends by checking that warden is alive (and,
through the harness, that its log has no sanitizer report).

The attackers are raw sockets (limits_helpers.RawAmqp) bound to 127.0.0.2 where the source
address matters; the legitimate devices are python-proton clients on 127.0.0.1.
"""

import os
import socket
import struct
import threading
import time
import unittest

from warden_harness import (ACCEPTED, WardenTestCase, connect_error, new_id, sas_token,
                            telemetry_message, wait_until)
from limits_helpers import (ACCEPTED_STATE, DISPOSITION, END, SASL_AUTH, SASL_HEADER, SASL_OK, Closed, RawAmqp,
                            ATTACH, BEGIN, FLOW, TRANSFER, attach_frame, begin_frame, described, detach_frame,
                            end_frame, frame, lst, metric_value, null, raw_login, transfer_frame, uint)

RESOURCE_LIMIT = "amqp:resource-limit-exceeded"
ATTACKER = "127.0.0.2"   # loopback only
LOCAL = "127.0.0.1"


class LimitsCase(WardenTestCase):
    """Shared checks."""

    gw = None

    def port(self, gw=None):
        return (gw or self.gw).ports["amqp"]

    def assertHealthy(self, gw=None):
        gw = gw or self.gw
        gw.assert_alive()
        r = gw.rest("GET", "/healthz", token=None)
        self.assertEqual(r.status, 200, "/healthz: %r" % r)

    def assertDeviceWorks(self, gw=None, note=""):
        """A fresh device connects from 127.0.0.1 and gets a telemetry message accepted."""
        gw = gw or self.gw
        dev, key = gw.create_device()
        c = gw.device_client(dev, key)
        try:
            state = c.sender("telemetry").send(telemetry_message(b"still-works", msg_id=new_id("m")))
            self.assertEqual(state, ACCEPTED, "telemetry not accepted %s" % note)
        finally:
            c.close()

    def raw(self, gw=None, source=LOCAL, timeout=5.0):
        c = RawAmqp(self.port(gw), source=source, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def raw_device(self, gw=None, source=LOCAL):
        """A raw connection logged in (SASL PLAIN + open) as a fresh device. Returns (conn, open frame)."""
        gw = gw or self.gw
        dev, key = gw.create_device()
        c = self.raw(gw, source=source)
        return c, c.login(dev, sas_token(dev, key))

    def assertClosedSoon(self, c, within, what):
        took = c.wait_closed(within)
        self.assertIsNotNone(took, "%s: warden kept the connection open for %.1f s" % (what, within))
        return took


# --------------------------------------------------------------------------
# 1. failed logins per source address

class AuthFailuresPerAddressTest(LimitsCase):
    THRESHOLD = 5
    BLOCK_S = 2
    ATTEMPTS = 1000
    THREADS = 4

    def test_thousand_failed_logins_block_only_that_address(self):
        gw = self.start_gateway(sections={"auth": {"failures_per_address": str(self.THRESHOLD),
                                                   "block_time": str(self.BLOCK_S)}})
        port = self.port(gw)
        legit, legit_key = gw.create_device()       # keeps sending from 127.0.0.1 throughout
        other, other_key = gw.create_device()       # fresh logins from 127.0.0.1 during the attack
        target, target_key = gw.create_device()     # the device the attacker guesses for

        # baseline: 127.0.0.2 can log in with valid credentials
        self.assertEqual(raw_login(port, target, sas_token(target, target_key), source=ATTACKER), SASL_OK,
                         "a valid login from %s failed before any attack" % ATTACKER)

        outcomes = []
        errors = []
        lock = threading.Lock()

        def attack(n):
            try:
                for i in range(n):
                    code = raw_login(port, target, "SharedAccessSignature sr=x&sig=wrong%d&se=1" % i,
                                     source=ATTACKER)
                    with lock:
                        outcomes.append(code)
                    time.sleep(0.004)  # spread the attack over about a second
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=attack, args=(self.ATTEMPTS // self.THREADS,), daemon=True)
                   for _ in range(self.THREADS)]
        c = gw.device_client(legit, legit_key)
        self.addCleanup(c.close)
        sender = c.sender("telemetry")
        sent = []
        during = 0
        fresh_logins = 0
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or len(sent) < 50:
            attacking = any(t.is_alive() for t in threads)
            mid = new_id("m")
            state = sender.send(telemetry_message(b'{"n": %d}' % len(sent), msg_id=mid))
            self.assertEqual(state, ACCEPTED, "legitimate telemetry from 127.0.0.1 not accepted during the attack")
            sent.append(mid)
            if attacking:
                during += 1
                if during % 10 == 0:   # a fresh login from the unaffected address, mid-attack
                    o = gw.device_client(other, other_key, timeout=5.0)
                    o.close()
                    fresh_logins += 1
            self.assertLess(time.monotonic() - t0, 40, "attack did not finish in time")
        for t in threads:
            t.join(5)
        self.assertEqual(errors, [], "attacker sockets failed: %s" % errors[:3])
        self.assertEqual(len(outcomes), self.ATTEMPTS)
        self.assertEqual(outcomes.count(SASL_AUTH), self.ATTEMPTS,
                         "every failed login must get a SASL outcome 'auth' (1): %s"
                         % {k: outcomes.count(k) for k in set(outcomes)})
        self.assertGreaterEqual(during, 5, "the legitimate device hardly ran during the attack")
        self.assertGreaterEqual(fresh_logins, 1, "no fresh login from 127.0.0.1 happened during the attack")

        # Blocked: one more failure (re-arms the block if it just ran out: the minute's count is far
        # over the threshold), then the VALID token from 127.0.0.2 is refused...
        self.assertEqual(raw_login(port, target, "wrong", source=ATTACKER), SASL_AUTH)
        self.assertEqual(raw_login(port, target, sas_token(target, target_key), source=ATTACKER), SASL_AUTH,
                         "a valid login from %s must be refused while the address is blocked" % ATTACKER)
        # ...while the same device with the same kind of token from 127.0.0.1 is fine, and so is a proton client
        self.assertEqual(raw_login(port, target, sas_token(target, target_key), source=LOCAL), SASL_OK,
                         "blocking %s must not affect 127.0.0.1" % ATTACKER)
        o = gw.device_client(other, other_key, timeout=5.0)
        o.close()
        sent.append(new_id("m"))
        self.assertEqual(sender.send(telemetry_message(b"after", msg_id=sent[-1])), ACCEPTED)

        # after block_time, 127.0.0.2 logs in again and its device really works
        time.sleep(self.BLOCK_S + 1.2)
        r = self.raw(gw, source=ATTACKER)
        try:
            r.login(target, sas_token(target, target_key))
        except (AssertionError, Closed) as e:
            self.fail("a valid login from %s still refused %.1f s after block_time: %s"
                      % (ATTACKER, self.BLOCK_S + 1.2, e))
        r.begin(0)
        _, credit, detach = r.attach_sender(0, 0, "telemetry")
        self.assertIsNone(detach, "telemetry sender from %s refused" % ATTACKER)
        self.assertGreater(credit, 0)
        self.assertEqual(r.send_message(0, 0, 0, b"back again"), ACCEPTED_STATE)
        r.close()

        self.assertHealthy(gw)
        m = gw.rest("GET", "/metrics")
        self.assertEqual(m.status, 200, m)
        failures = metric_value(m.body.decode("utf-8", "replace"), "warden_auth_failures_total")
        self.assertIsNotNone(failures, "warden_auth_failures_total missing from /metrics")
        self.assertGreaterEqual(failures, self.ATTEMPTS + 2)
        text = m.body.decode("utf-8", "replace")
        accepted = metric_value(text, "warden_connections_accepted_total")
        closed = metric_value(text, "warden_connections_closed_total")
        self.assertIsNotNone(accepted, "warden_connections_accepted_total missing from /metrics")
        self.assertIsNotNone(closed, "warden_connections_closed_total missing from /metrics")
        # every refused login was a connection accepted and then closed; the legitimate sender is still open
        self.assertGreaterEqual(closed, self.ATTEMPTS)
        self.assertGreaterEqual(accepted, closed + 1)

        c.close()
        got = self.read_group(gw, new_id("g"), sent, device=legit, timeout=20)
        self.assertEqual(sorted(m.id for m in got), sorted(sent),
                         "telemetry accepted during the attack is missing from the log")


# --------------------------------------------------------------------------
# 2. SASL deadline

class SaslDeadlineTest(LimitsCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"sasl_timeout": "1"}})

    def tearDown(self):
        self.assertHealthy()

    def test_unauthenticated_connections_are_closed(self):
        silent = self.raw()
        header_only = self.raw()
        header_only.send(SASL_HEADER)
        mechs_only = self.raw()
        self.assertEqual(mechs_only.sasl_mechanisms(), ["PLAIN"])
        dev, key = self.gw.create_device()
        no_open = self.raw()     # authenticated, but never sends open
        self.assertEqual(no_open.sasl_plain(dev, sas_token(dev, key)), SASL_OK)
        no_open.send(b"AMQP\x00\x01\x00\x00")
        start = time.monotonic()
        for name, c in (("silent", silent), ("protocol header only", header_only),
                        ("SASL header, no init", mechs_only), ("authenticated, no open", no_open)):
            self.assertClosedSoon(c, max(0.1, start + 3.5 - time.monotonic()), name)
        took = time.monotonic() - start
        self.assertLess(took, 3.5)

    def test_deadline_is_not_earlier_than_sasl_timeout(self):
        c = self.raw()
        t0 = time.monotonic()
        took = c.wait_closed(4.0)
        self.assertIsNotNone(took, "a silent connection outlived sasl_timeout = 1 s by 3 s")
        self.assertGreaterEqual(time.monotonic() - t0, 0.8, "closed before sasl_timeout had passed")

    def test_normal_clients_outlive_the_deadline(self):
        dev, key = self.gw.create_device()
        c = self.device_client(self.gw, dev, key)
        svc = self.service_client(self.gw)
        s = c.sender("telemetry")
        c.pump(2.5)   # longer than sasl_timeout plus a check
        mid = new_id("m")
        self.assertEqual(s.send(telemetry_message(b"late", msg_id=mid)), ACCEPTED)
        got = self.read_group(self.gw, new_id("g"), [mid], client=svc)
        self.assertEqual([m.id for m in got], [mid])


# --------------------------------------------------------------------------
# 3. links per connection

class SessionWindowTest(LimitsCase):
    """A device's session incoming-window bounds how many transfer frames warden may send it.
    A command too large for that window must wait for the window to grow, not be marked
    delivered (its delivery-count raised) again and again without ever reaching the device."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.assertHealthy()

    def session_flow(self, r, window, handle=None, credit=0):
        fields = [uint(0), uint(window), uint(0), uint(2048)]
        if handle is not None:
            fields += [uint(handle), uint(0), uint(credit)]
        r.send(frame(described(FLOW, lst(*fields)), channel=0))

    def test_a_command_larger_than_the_window_waits_for_it(self):
        dev, key = self.gw.create_device()
        r = self.raw(self.gw)
        self.addCleanup(r.close)
        r.login(dev, sas_token(dev, key), max_frame=512)
        r.send(frame(described(BEGIN, lst(null(), uint(0), uint(1), uint(2048))), channel=0))  # a window of 1 frame
        r.expect(BEGIN, channel=0)
        r.send(attach_frame(0, 0, "cmd", "commands", sender=False))
        r.expect(ATTACH, channel=0)
        self.session_flow(r, 1, handle=0, credit=10)
        big = self.gw.rest("POST", "/v1/devices/%s/commands" % dev, b"b" * 3000,
                           headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(big.status, 202, big)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                f = r.read_frame(max(0.0, deadline - time.monotonic()))
            except socket.timeout:
                break
            self.assertNotEqual(f.code, TRANSFER, "a transfer past the device's window: %r" % f)
        st = self.gw.rest("GET", "/v1/devices/%s/commands/%s" % (dev, big.json["messageId"]))
        self.assertEqual(st.status, 200, st)
        self.assertEqual(st.json["status"], "queued", "the command was not kept for the device: %r" % st.json)
        # The window grows: the whole command arrives, in frames of at most 512 bytes.
        self.session_flow(r, 64)
        got, more = 0, True
        while more:
            f = r.expect(TRANSFER, timeout=5.0, channel=0)
            got += 1
            more = bool(f.field(5))
        self.assertGreaterEqual(got, 6, "3000 bytes in %d transfer frames of at most 512" % got)

class LinksPerConnectionTest(LimitsCase):
    MAX_LINKS = 3

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"max_links": str(cls.MAX_LINKS),
                                                            "max_message_size": "1024"}})

    def tearDown(self):
        self.assertHealthy()

    def device(self):
        dev, key = self.gw.create_device()
        return dev, self.device_client(self.gw, dev, key)

    def test_fourth_attach_refused_and_closing_one_frees_a_slot(self):
        dev, c = self.device()
        t = c.sender("telemetry")
        cmd = c.receiver("commands")
        resp = c.sender("responses")
        self.assertAttachRefused(c, "telemetry", condition=RESOURCE_LIMIT)
        self.assertAttachRefused(c, "commands", sender=False, condition=RESOURCE_LIMIT)
        # the three attached links are unaffected
        self.assertEqual(t.send(telemetry_message(b"one", msg_id=new_id("m"))), ACCEPTED)
        # the limit is per connection: another device has its own three
        _, c2 = self.device()
        others = [c2.sender("telemetry"), c2.sender("inquiries"), c2.receiver("commands")]
        self.assertEqual(others[0].send(telemetry_message(b"c2", msg_id=new_id("m"))), ACCEPTED)
        # closing one lets exactly one new link attach
        resp.close()
        t2 = c.sender("telemetry")
        self.assertEqual(t2.send(telemetry_message(b"two", msg_id=new_id("m"))), ACCEPTED)
        self.assertAttachRefused(c, "telemetry", condition=RESOURCE_LIMIT)
        t.close()
        t2.close()
        cmd.close()
        links = [c.sender("telemetry") for _ in range(self.MAX_LINKS)]
        self.assertAttachRefused(c, "telemetry", condition=RESOURCE_LIMIT)
        for l in links:
            self.assertEqual(l.send(telemetry_message(b"x", msg_id=new_id("m"))), ACCEPTED)

    def test_refused_links_held_open_end_the_connection(self):
        """A refused attach holds warden's state until the peer detaches it too. A device that
        never does cannot pile them up: past twice max_links + 8 links held, the connection ends
        with resource-limit-exceeded (and warden goes on serving)."""
        r, _ = self.raw_device()
        self.addCleanup(r.close)
        r.begin(0)
        held = 2 * self.MAX_LINKS + 8
        for h in range(held):
            _, _, detach = r.attach_sender(0, h, "telemetry")
            if h >= self.MAX_LINKS:
                self.assertIsNotNone(detach, "attach %d was not refused" % h)
        r.send(attach_frame(0, held, "one-too-many", "telemetry", sender=True))
        self.assertIsNotNone(r.wait_closed(5.0), "the connection stayed open")
        self.assertEqual(r.close_condition[0] if r.close_condition else None, RESOURCE_LIMIT)

    def test_links_ended_with_their_session_are_freed(self):
        """A session ended with its links still attached takes them with it, and their slots must come
        back. python-proton's Session.close() does exactly this: it sends end and no detach."""
        r, _ = self.raw_device()
        for rnd in range(2):
            r.begin(0)
            for h in range(self.MAX_LINKS):
                _, credit, detach = r.attach_sender(0, h, "telemetry")
                self.assertIsNone(detach, "round %d: attach %d refused: %r (links of an ended session "
                                  "still counted)" % (rnd, h, detach and detach.condition()))
            r.send(end_frame(0))
            r.expect(END, channel=0)

    def test_links_detached_by_warden_are_freed(self):
        """A link warden detaches itself (a message growing far over max_message_size) must not keep
        its slot. The message is sent in parts (more = true) so that warden sees it grow."""
        r, _ = self.raw_device()
        r.begin(0)
        part = b"\x00\x53\x75\xb0" + struct.pack(">I", 200 * 1024) + b"p" * (60 * 1024 - 8)
        for h in range(self.MAX_LINKS + 1):
            _, credit, detach = r.attach_sender(0, h, "telemetry")
            self.assertIsNone(detach, "attach %d refused after %d links were detached by warden: %r"
                              % (h + 1, h, detach and detach.condition()))
            r.send(transfer_frame(0, h, h, part, more=True, raw=True))   # delivery-ids are per session
            r.send(transfer_frame(0, h, h, b"q" * (60 * 1024), more=True, raw=True))
            d = r.expect_detach(0, h)
            self.assertEqual(d.condition() and d.condition()[0], "amqp:link:message-size-exceeded")
            r.send(detach_frame(0, h))


# --------------------------------------------------------------------------
# 4. sessions per connection

class SessionsPerConnectionTest(LimitsCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"max_sessions": "2"}})

    def tearDown(self):
        self.assertHealthy()

    def test_third_session_ends_the_connection(self):
        r, opened = self.raw_device()
        self.assertEqual(int(opened.field(3)), 1, "warden should announce channel-max = max_sessions - 1")
        r.begin(0)
        r.begin(1)
        # both sessions work
        _, credit, detach = r.attach_sender(1, 0, "telemetry")
        self.assertIsNone(detach)
        self.assertEqual(r.send_message(1, 0, 0, b"on session 2"), ACCEPTED_STATE)
        r.send(begin_frame(2))
        self.assertClosedSoon(r, 3.0, "a third session")
        self.assertIsNotNone(r.close_condition, "the connection ended without an error condition")
        self.assertTrue(r.close_condition[0].startswith("amqp:"), r.close_condition)
        self.assertHealthy()
        self.assertDeviceWorks(note="after a connection was ended for a third session")

    def test_sessions_can_be_reused_after_end(self):
        r, _ = self.raw_device()
        for rnd in range(3):
            r.begin(0)
            r.begin(1)
            r.send(end_frame(0) + end_frame(1))
            r.expect(END, channel=0)
            r.expect(END, channel=1)


# --------------------------------------------------------------------------
# 5. connections per source address

class ConnectionsPerAddressTest(LimitsCase):
    LIMIT = 3

    def test_fourth_connection_from_one_address_is_dropped(self):
        gw = self.start_gateway(sections={"amqp": {"max_connections_per_address": str(self.LIMIT)}})
        port = self.port(gw)
        devs = [gw.create_device() for _ in range(self.LIMIT + 2)]
        conns = [gw.device_client(d, k) for d, k in devs[:self.LIMIT]]
        for c in conns:
            self.addCleanup(c.close)
        senders = [c.sender("telemetry") for c in conns]

        # the 4th from 127.0.0.1: a device, a service, or a raw socket - cut off before SASL
        err = connect_error(lambda: gw.device_client(*devs[self.LIMIT], timeout=5.0))
        self.assertIsNotNone(err, "a 4th connection from 127.0.0.1 was served")
        err = connect_error(lambda: gw.service_client(timeout=5.0))
        self.assertIsNotNone(err, "a 4th (service) connection from 127.0.0.1 was served")
        for _ in range(10):
            raw = RawAmqp(port, source=LOCAL)
            raw.send(SASL_HEADER)
            took = raw.wait_closed(3.0)
            raw.close()
            self.assertIsNotNone(took, "a 4th raw connection from 127.0.0.1 stayed open")
            self.assertIsNone(raw.peer_header, "warden answered SASL on a connection over the limit")

        # another address is served: mechanisms, and a full login that works
        r = self.raw(gw, source=ATTACKER)
        self.assertEqual(r.sasl_mechanisms(), ["PLAIN"])
        r.close()
        d, k = devs[self.LIMIT + 1]
        r = self.raw(gw, source=ATTACKER)
        r.login(d, sas_token(d, k))
        r.begin(0)
        self.assertIsNone(r.attach_sender(0, 0, "telemetry")[2])
        self.assertEqual(r.send_message(0, 0, 0, b"from 127.0.0.2"), ACCEPTED_STATE)

        # the three are unaffected
        for s in senders:
            self.assertEqual(s.send(telemetry_message(b"ok", msg_id=new_id("m"))), ACCEPTED)

        # close one: a new one is served (refused attempts did not leak), and then the limit holds again
        conns[0].close()
        d, k = devs[self.LIMIT]
        box = []

        def try_connect():
            try:
                box.append(gw.device_client(d, k, timeout=3.0))
                return True
            except Exception:
                return False
        self.assertTrue(wait_until(try_connect, 5.0, interval=0.1),
                        "no new connection from 127.0.0.1 after one of the %d closed" % self.LIMIT)
        self.addCleanup(box[-1].close)
        self.assertEqual(box[-1].sender("telemetry").send(telemetry_message(b"new", msg_id=new_id("m"))), ACCEPTED)
        self.assertIsNotNone(connect_error(lambda: gw.device_client(*devs[0], timeout=5.0)),
                             "the limit no longer holds after a connection was replaced")
        self.assertHealthy(gw)


# --------------------------------------------------------------------------
# 6. frame size

class FrameSizeTest(LimitsCase):
    MAX_FRAME = 1024

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"max_frame_size": str(cls.MAX_FRAME)}})

    def tearDown(self):
        self.assertHealthy()

    def test_large_message_is_fragmented_by_a_normal_client(self):
        dev, key = self.gw.create_device()
        c = self.device_client(self.gw, dev, key)
        body = os.urandom(100 * 1024)
        mid = new_id("m")
        self.assertEqual(c.sender("telemetry").send(telemetry_message(body, msg_id=mid)), ACCEPTED)
        got = self.read_group(self.gw, new_id("g"), [mid])
        self.assertEqual([m.id for m in got], [mid])
        self.assertEqual(got[0].body, body, "the 100 KiB body changed on the way")

    def test_frame_over_the_limit_closes_the_connection(self):
        r, opened = self.raw_device()
        self.assertEqual(int(opened.field(2)), self.MAX_FRAME, "warden's open must announce max-frame-size")
        r.begin(0)
        _, credit, detach = r.attach_sender(0, 0, "telemetry")
        self.assertIsNone(detach)
        # a transfer that fits is accepted: the raw client is sound
        self.assertEqual(r.send_message(0, 0, 0, b"a" * (self.MAX_FRAME - 100)), ACCEPTED_STATE)
        # a complete, valid transfer frame just over the limit
        big = transfer_frame(0, 0, 1, b"b" * (self.MAX_FRAME + 8))
        self.assertGreater(len(big), self.MAX_FRAME)
        r.send(big)
        self.assertClosedSoon(r, 3.0, "a %d-byte frame over max_frame_size %d" % (len(big), self.MAX_FRAME))
        self.assertFalse(any(f.code == DISPOSITION and f.field(1) == 1 for f in r.frames),
                         "the oversized frame's message was settled")
        self.assertIsNotNone(r.close_condition)
        self.assertDeviceWorks(note="after an oversized frame")

    def test_size_field_claiming_more_than_the_limit(self):
        r, _ = self.raw_device()
        # claims 4 KiB (over this limit, under the default), sends only its first 24 bytes: warden
        # must not wait for the rest
        r.send(struct.pack(">IBBH", 4 * self.MAX_FRAME, 2, 0, 0) + b"\x00" * 16)
        self.assertClosedSoon(r, 3.0, "a frame header claiming %d bytes" % (4 * self.MAX_FRAME))
        self.assertDeviceWorks(note="after a frame header claiming more than max_frame_size")


# --------------------------------------------------------------------------
# 7. garbage

class GarbageTest(LimitsCase):
    """Each kind of garbage closes that connection; the gateway stays up and a device works right after."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"sasl_timeout": "2"}})

    def tearDown(self):
        self.assertHealthy()
        self.assertDeviceWorks(note="right after %s" % self._testMethodName)

    def garbage(self, data, within=3.0, what=None, shut=False, c=None):
        c = c or self.raw()
        try:
            c.send(data)
            if shut:
                c.sock.shutdown(socket.SHUT_WR)
        except Closed:
            return
        self.assertClosedSoon(c, within, what or repr(data[:40]))

    def test_random_bytes(self):
        for _ in range(5):
            data = os.urandom(256)
            if data[:1] == b"A":
                data = b"Z" + data[1:]
            self.garbage(data, what="256 random bytes")

    def test_wrong_protocol_headers(self):
        for hdr in (b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x09\x01", b"AMQP\x03\x02\x00\x00",
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            self.garbage(hdr, what="header %r" % hdr)

    def test_truncated_frame_before_login(self):
        part = SASL_HEADER + struct.pack(">IBBH", 100, 2, 1, 0) + b"\x00\x53\x41"   # 100 claimed, 11 sent
        self.garbage(part, within=4.0, what="a truncated SASL frame (peer silent: the SASL deadline)")
        self.garbage(part, within=2.0, shut=True, what="a truncated SASL frame, then FIN")

    def test_absurd_frame_sizes_before_login(self):
        for size in (0xFFFFFFFF, 0x7FFFFFFF, 0, 4, 7):
            self.garbage(SASL_HEADER + struct.pack(">IBBH", size, 2, 1, 0) + b"\x00" * 8,
                         what="SASL frame size 0x%x" % size)

    def test_absurd_frame_sizes_after_login(self):
        for size in (0xFFFFFFFF, 0x7FFFFFFF, 0, 4, 7):
            r, _ = self.raw_device()
            self.garbage(struct.pack(">IBBH", size, 2, 0, 0) + b"\x00" * 8, c=r,
                         what="AMQP frame size 0x%x after login" % size)
            self.assertIsNotNone(r.close_condition, "no close frame for frame size 0x%x" % size)

    def test_bad_data_offset_after_login(self):
        for doff in (0, 1, 255):
            r, _ = self.raw_device()
            self.garbage(struct.pack(">IBBH", 16, doff, 0, 0) + b"\x00" * 8, c=r, what="doff %d" % doff)

    def test_truncated_frame_after_login_then_fin(self):
        """A peer that goes away (FIN) in the middle of a frame: nothing more can come, so the
        connection must be closed, not kept until the idle time-out (120 s here)."""
        r, _ = self.raw_device()
        self.garbage(struct.pack(">IBBH", 100, 2, 0, 0) + b"\x00\x53\x14", c=r, shut=True,
                     what="a truncated AMQP frame after login, then FIN")

    def test_undecodable_frame_after_login(self):
        """A frame whose body is not AMQP: warden must end the connection (decode error), not stop
        reading and leave it open until the idle time-out."""
        for body in (b"\x00\x53\x10\xff\xff\xff\xff\xff", bytes([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])):
            r, _ = self.raw_device()
            self.garbage(struct.pack(">IBBH", 8 + len(body), 2, 0, 0) + body, c=r,
                         what="an undecodable frame body %r after login" % body)


if __name__ == "__main__":
    unittest.main()
