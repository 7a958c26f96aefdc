"""Hardening: a device flooding telemetry is paced by credit (device_rate); a
nearly full store pauses devices and refuses enqueues without losing anything
accepted, and flow resumes by itself once consumers drain it; hostile HTTP
clients (slowloris, huge headers) cannot take the REST server down."""
import socket
import threading
import time
import unittest

from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

from limits_helpers import (ACCEPTED_STATE, AMQP_HEADER, ATTACH, BEGIN, DATA_SECTION, OPEN, SASL_HEADER,
                            SASL_OUTCOME, RawAmqp, attach_frame, begin_frame, binary, close_frame, described,
                            flow_frame, metric_value, open_frame, sasl_init_plain, transfer_frame)
from warden_harness import ACCEPTED, WardenTestCase, new_id, sas_token, telemetry_message


class Flood(MessagingHandler):
    """Sends unsettled telemetry as fast as credit allows for `seconds`; counts outcomes."""

    def __init__(self, url, user, password, seconds, size=64, prefix="m"):
        super().__init__()
        self.url, self.user, self.password = url, user, password
        self.seconds, self.body, self.prefix = seconds, b"x" * size, prefix
        self.sent = 0
        self.accepted = []
        self.rejected = 0
        self.error = None

    def on_start(self, event):
        self.conn = event.container.connect(self.url, user=self.user, password=self.password,
                                            allowed_mechs="PLAIN", reconnect=False)
        event.container.create_sender(self.conn, "telemetry")
        event.container.schedule(self.seconds, self)

    def on_sendable(self, event):
        while event.sender.credit:
            self.sent += 1
            d = event.sender.send(Message(id="%s-%d" % (self.prefix, self.sent), body=self.body))
            d.ident = "%s-%d" % (self.prefix, self.sent)

    def on_accepted(self, event):
        self.accepted.append(event.delivery.ident)

    def on_rejected(self, event):
        self.rejected += 1

    def on_transport_error(self, event):
        self.error = event.transport.condition

    def on_timer_task(self, event):
        self.conn.close()
        event.container.stop()


def flood(gw, device, key, seconds, **kw):
    f = Flood(gw.amqp_url, device, sas_token(device, key), seconds, **kw)
    Container(f).run()
    return f


class DeviceRateTest(WardenTestCase):
    def test_a_flooding_device_is_paced_by_credit_and_others_are_not(self):
        gw = self.start_gateway(sections={"amqp": {"device_rate": "200"}})
        noisy, noisy_key = gw.create_device()
        quiet, quiet_key = gw.create_device()
        result = {}
        t = threading.Thread(target=lambda: result.update(f=flood(gw, noisy, noisy_key, 3.0, prefix="noisy")))
        t.start()
        # Meanwhile another device sends a little and is served at once.
        time.sleep(0.5)
        c = self.device_client(gw, quiet, quiet_key)
        started = time.time()
        self.send_telemetry(c, [Message(id="quiet-%d" % i, body=b"q") for i in range(20)])
        quiet_seconds = time.time() - started
        t.join(15)
        f = result["f"]
        # A second's burst plus 200/s for 3 s, and a little slack for the clock.
        self.assertLessEqual(len(f.accepted), 200 + 3 * 200 + 100, "the rate was not enforced")
        self.assertGreaterEqual(len(f.accepted), 500, "the device was starved, not paced")
        self.assertEqual(f.rejected, 0, "the rate must be enforced by credit, never by rejecting")
        self.assertLess(quiet_seconds, 2.0, "another device was slowed by the flood")
        print("device_rate 200: %d accepted in 3 s, none rejected; 20 from another device in %.2f s"
              % (len(f.accepted), quiet_seconds))


class StorePressureTest(WardenTestCase):
    def test_nearly_full_store_pauses_devices_refuses_enqueues_and_recovers(self):
        gw = self.start_gateway(sections={"store": {"max_size": "4M"}, "amqp": {"device_rate": "0"}})
        dev, key = gw.create_device()
        svc = self.service_client(gw)
        check = svc.receiver("telemetry/check")  # exists before anything is sent, so nothing is trimmed early
        f = flood(gw, dev, key, 4.0, size=2000, prefix="p1")
        self.assertIsNone(f.error)
        self.assertGreater(len(f.accepted), 200)
        # Paused: the device got no more credit, well before it could send 4 s worth.
        self.assertLess(f.sent, 5000, "the device kept getting credit on a full store")
        r = gw.rest("POST", "/v1/devices/%s/commands" % dev, body=b"x", headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["error"], "store_busy")
        self.assertIn("retry-after", r.headers)
        # Every accepted message is intact and readable; draining makes room.
        got = self.read_group(gw, "check", want_ids=f.accepted, timeout=20, client=svc)
        self.assertEqual(sorted(m.id for m in got), sorted(f.accepted))
        ok = False
        deadline = time.time() + 10
        while time.time() < deadline and not ok:
            time.sleep(0.3)
            r = gw.rest("POST", "/v1/devices/%s/commands" % dev, body=b"x", headers={"Content-Type": "text/plain"})
            ok = r.status == 202
        self.assertTrue(ok, "enqueues still refused after consumers drained the store: %r" % r)
        # And devices get credit again by themselves.
        f2 = flood(gw, dev, key, 1.5, size=2000, prefix="p2")
        self.assertGreater(len(f2.accepted), 100, "telemetry did not resume after the store drained")
        del check


class HostileHttpTest(WardenTestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def healthz_seconds(self):
        started = time.time()
        r = self.gw.rest("GET", "/healthz", token=None, timeout=5)
        self.assertEqual(r.status, 200)
        return time.time() - started

    def test_slowloris_clients_do_not_block_others(self):
        socks = []
        try:
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", self.gw.http_port), timeout=5)
                s.sendall(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
                socks.append(s)
            for _ in range(3):
                for s in socks:
                    s.sendall(b"X-Slow: 1\r\n")
                self.assertLess(self.healthz_seconds(), 1.0, "a slow client held up the server")
                time.sleep(0.2)
        finally:
            for s in socks:
                s.close()
        self.assertLess(self.healthz_seconds(), 1.0)

    def test_huge_headers_are_refused_and_the_server_stays_up(self):
        s = socket.create_connection(("127.0.0.1", self.gw.http_port), timeout=5)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before taking it all
        try:
            answer = s.recv(200)
        except (ConnectionResetError, socket.timeout):
            answer = b""
        s.close()
        self.assertFalse(answer.startswith(b"HTTP/1.1 200"), "a 1 MiB header was accepted: %r" % answer[:80])
        self.assertLess(self.healthz_seconds(), 1.0)

    def test_garbage_requests_get_errors_not_crashes(self):
        for raw in (b"\x00\x01\x02\xff" * 50 + b"\r\n\r\n", b"GET\r\n\r\n", b"POST /v1/devices/x HTTP/1.1\r\n"
                    b"Content-Length: -5\r\n\r\n", b"PUT /v1/devices/%00 HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", self.gw.http_port), timeout=5)
            try:
                s.sendall(raw)
                s.recv(200)
            except (ConnectionResetError, socket.timeout, BrokenPipeError):
                pass
            finally:
                s.close()
        self.gw.assert_alive()
        self.assertLess(self.healthz_seconds(), 1.0)


class IdleTimeoutTest(WardenTestCase):
    """warden offers [amqp] idle_timeout, grants a device the longer one it asks for up to
    max_idle_timeout, and drops a peer that stays silent longer."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(sections={"amqp": {"idle_timeout": "1", "max_idle_timeout": "4"}})
        cls.dev, cls.key = cls.gw.create_device()

    def silent_for(self, idle_ms):
        """Logs in (asking for idle_ms, or nothing) and stays silent; seconds until warden drops it."""
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.login(self.dev, sas_token(self.dev, self.key), idle_ms=idle_ms)
        return c.wait_closed(10.0)

    def test_a_silent_peer_is_dropped_after_the_offered_timeout(self):
        took = self.silent_for(None)
        self.assertIsNotNone(took, "a silent peer was never dropped")
        self.assertGreater(took, 0.8)
        self.assertLess(took, 3.0)

    def test_a_sleeping_device_gets_the_longer_timeout_it_asks_for(self):
        took = self.silent_for(3000)
        self.assertIsNotNone(took)
        self.assertGreater(took, 2.5, "the device's longer idle time-out was not honoured")
        self.assertLess(took, 6.0)

    def test_a_longer_request_is_capped_at_max_idle_timeout(self):
        took = self.silent_for(60000)
        self.assertIsNotNone(took, "a device asking for 60 s was kept beyond max_idle_timeout (4 s)")
        self.assertGreater(took, 3.5)
        self.assertLess(took, 8.0)

    def test_a_client_that_sends_heartbeats_stays(self):
        c = self.device_client(self.gw, self.dev, self.key)
        c.pump(2.5)  # python-proton answers warden's idle time-out with empty frames
        self.send_telemetry(c, [Message(id="still-here", body=b"x")])


class CloseWithoutHangingUpTest(WardenTestCase):
    """A peer that closes its AMQP connection but keeps its socket open is let go at
    once: it no longer counts as connected, and warden closes the socket."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def connected(self, dev):
        r = self.gw.rest("GET", "/v1/devices/" + dev)
        self.assertEqual(r.status, 200, r)
        return r.json["connected"]

    def test_a_closed_connection_whose_socket_stays_open_is_gone(self):
        dev, key = self.gw.create_device()
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.login(dev, sas_token(dev, key))
        deadline = time.monotonic() + 3
        while not self.connected(dev) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(self.connected(dev), "the device never showed as connected")
        c.send(close_frame())
        self.assertIsNotNone(c.wait_closed(5.0), "warden did not answer the close")
        # our end of the socket stays open
        deadline = time.monotonic() + 3
        while self.connected(dev) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(self.connected(dev), "a device that closed its connection still shows as connected 3 s later")


def open_connections(gw):
    """Connections warden accepted and has not let go of yet, from /metrics."""
    text = gw.rest("GET", "/metrics").body.decode("utf-8", "replace")
    return metric_value(text, "warden_connections_accepted_total") - metric_value(text, "warden_connections_closed_total")


def assert_let_go(case, gw, before, what, within=3.0):
    """warden holds no more connections than `before` within `within` seconds: none it closed is kept."""
    deadline = time.monotonic() + within
    while open_connections(gw) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    case.assertLessEqual(open_connections(gw), before, "%s: warden kept the connection after closing it" % what)


class WrongSaslTest(WardenTestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()
        cls.dev, cls.key = cls.gw.create_device()

    def test_a_login_pipelined_with_its_first_frames_is_served(self):
        """A client may send its AMQP header and first frames in the same write as its sasl-init: the
        engine warden starts on the login reads them (Proton binds it only once its first events run)."""
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.send(SASL_HEADER + sasl_init_plain(self.dev, sas_token(self.dev, self.key)) + AMQP_HEADER + open_frame()
               + begin_frame(0) + attach_frame(0, 0, "pipelined", "telemetry", sender=True))
        self.assertEqual(c.read_header(), SASL_HEADER)
        self.assertEqual(int(c.expect(SASL_OUTCOME).field(0)), 0)
        self.assertEqual(c.read_header(), AMQP_HEADER)
        c.expect(OPEN)
        c.expect(BEGIN, channel=0)
        c.remote_handles[(0, 0)] = c.expect(ATTACH, channel=0).field(1)
        self.assertEqual(c.send_message(0, 0, 0, described(DATA_SECTION, binary(b"pipelined"))), ACCEPTED_STATE)

    def test_an_idle_time_out_of_a_few_ms_is_refused_not_fed(self):
        """Heartbeats are due at half the peer's idle time-out: for 1 ms, on every tick. warden
        refuses such a peer at its open instead of writing empty frames as fast as it can."""
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        self.assertEqual(c.sasl_plain(self.dev, sas_token(self.dev, self.key)), 0)
        c.send(AMQP_HEADER + open_frame(idle_ms=1))
        self.assertIsNotNone(c.wait_closed(5.0), "the connection stayed open")
        self.assertEqual(c.close_condition[0] if c.close_condition else None, "amqp:invalid-field")
        self.assertLess(len(c.frames), 10, "warden wrote %d frames to a peer it refused" % len(c.frames))
        self.gw.assert_alive()

    def test_bytes_other_than_sasl_before_the_login_end_the_connection(self):
        before = open_connections(self.gw)
        cases = {
            "the AMQP header without SASL": AMQP_HEADER,
            "a sasl-response before any challenge": SASL_HEADER + b"\x00\x00\x00\x0f\x02\x01\x00\x00\x00\x53\x43\xc0\x02\x01\x40",
            "a SASL frame over 1 KiB": SASL_HEADER + sasl_init_plain(self.dev, "x" * 2000),
            "an AMQP frame where SASL was due": SASL_HEADER + open_frame(),
        }
        for what, data in cases.items():
            c = RawAmqp(self.gw.ports["amqp"])
            self.addCleanup(c.close)
            c.send(data)
            self.assertIsNotNone(c.wait_closed(5.0), "%s: the connection stayed open" % what)
            if data.startswith(AMQP_HEADER):  # the answer is the header warden does speak
                self.assertEqual(c.peer_header, SASL_HEADER, what)
            self.assertFalse(any(f.code == SASL_OUTCOME and int(f.field(0)) == 0 for f in c.frames), what)
        assert_let_go(self, self.gw, before, "bytes other than SASL")
        self.gw.assert_alive()

    def test_a_second_sasl_init_after_the_outcome_ends_the_connection(self):
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        self.assertEqual(c.sasl_plain(self.dev, sas_token(self.dev, self.key)), 0)
        # Another identity's credentials, after the outcome and before the AMQP header
        # (Proton 0.37 hands it to the SASL plugin again): the connection ends, never switches.
        c.send(sasl_init_plain("admin", self.gw.token))
        self.assertIsNotNone(c.wait_closed(5.0), "a second sasl-init was tolerated")
        self.gw.assert_alive()
        d = self.device_client(self.gw, self.dev, self.key)
        self.send_telemetry(d, [Message(id="after", body=b"x")])



class FrameGuardTest(WardenTestCase):
    """Proton 0.37 aborts the process (assert in pn_do_transfer) on a first transfer
    frame with more=true and no delivery-id. warden reads every frame after SASL
    before Proton does and ends such a connection instead."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()
        cls.dev, cls.key = cls.gw.create_device()

    def assert_still_serving(self):
        self.gw.assert_alive()
        d = self.device_client(self.gw, self.dev, self.key)
        self.send_telemetry(d, [Message(id="after", body=b"x")])

    def test_a_multi_frame_transfer_without_delivery_id_ends_only_that_connection(self):
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.login(self.dev, sas_token(self.dev, self.key))
        c.begin(0)
        _, credit, detach = c.attach_sender(0, 0, "telemetry")
        self.assertIsNone(detach)
        self.assertGreater(credit, 0)
        c.send(transfer_frame(0, 0, None, described(DATA_SECTION, binary(b"part")), more=True, raw=True))
        self.assertIsNotNone(c.wait_closed(5.0), "the connection stayed open")
        self.assertEqual(c.close_condition[0] if c.close_condition else None, "amqp:invalid-field")
        self.assert_still_serving()
        refused = metric_value(self.gw.rest("GET", "/metrics").body.decode("utf-8", "replace"), "warden_frames_refused_total")
        self.assertIsNotNone(refused, "warden_frames_refused_total missing from /metrics")
        self.assertGreaterEqual(refused, 1)

    def test_the_same_frames_pipelined_behind_the_sasl_init_are_refused_too(self):
        # Everything in one write: the engine warden starts on the login gets the
        # AMQP frames at once, and one of them is refused before its first event.
        before = open_connections(self.gw)
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.send(SASL_HEADER + sasl_init_plain(self.dev, sas_token(self.dev, self.key)) + AMQP_HEADER + open_frame()
               + begin_frame(0) + attach_frame(0, 0, "pipelined", "telemetry", sender=True)
               + transfer_frame(0, 0, None, described(DATA_SECTION, binary(b"part")), more=True, raw=True))
        self.assertIsNotNone(c.wait_closed(5.0), "the connection stayed open")
        assert_let_go(self, self.gw, before, "a pipelined login with a refused frame")
        self.assert_still_serving()

    def test_continuation_frames_may_leave_out_the_delivery_id(self):
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.login(self.dev, sas_token(self.dev, self.key))
        c.begin(0)
        c.attach_sender(0, 0, "telemetry")
        body = described(DATA_SECTION, binary(b"split over three frames"))
        c.send(transfer_frame(0, 0, 0, body[:5], more=True, raw=True)
               + transfer_frame(0, 0, None, body[5:9], more=True, raw=True))
        c.send(transfer_frame(0, 0, None, body[9:], raw=True))
        self.assertEqual(c.send_message(0, 0, 1, b"the next one"), ACCEPTED_STATE)
        self.gw.assert_alive()

    def test_a_sender_that_moves_its_delivery_count_past_its_credit_loses_the_link(self):
        """A sender advances delivery-count only by sending, or by draining its credit; one that
        claims to be billions ahead has taken credit it was never given. warden never takes
        credit back, so this can only be the peer's doing: the link ends with
        transfer-limit-exceeded (found by fuzz_amqp: the credit arithmetic overflowed)."""
        c = RawAmqp(self.gw.ports["amqp"])
        self.addCleanup(c.close)
        c.login(self.dev, sas_token(self.dev, self.key))
        c.begin(0)
        _, credit, _ = c.attach_sender(0, 0, "telemetry")
        self.assertGreater(credit, 0)
        c.send(flow_frame(0, 0, 0, delivery_count=0x7FFFFFFF))
        c.send(transfer_frame(0, 0, 0, described(DATA_SECTION, binary(b"on credit it took")), raw=True))
        detach = c.expect_detach(0, 0)
        self.assertEqual(detach.condition()[0] if detach.condition() else None, "amqp:link:transfer-limit-exceeded")
        self.assert_still_serving()


class DescriptorExhaustionTest(WardenTestCase):
    """Every connection is a descriptor. A warden that runs out of them must
    keep its listener: once sockets close, devices get in again."""

    NOFILE = 128

    def test_running_out_of_descriptors_keeps_the_listener(self):
        gw = self.start_gateway(nofile=self.NOFILE, tls=False)
        warning = [l for l in gw.stderr().splitlines() if "RLIMIT_NOFILE" in l]
        self.assertTrue(warning, "no warning that max_connections exceeds the descriptor limit")
        self.assertIn("max_connections", warning[0])
        dev, key = gw.create_device()

        socks = []
        try:
            for _ in range(self.NOFILE + 64):
                socks.append(socket.create_connection(("127.0.0.1", gw.ports["amqp"]), timeout=5))
            time.sleep(1.0)  # warden accepts until its descriptors run out
            self.assertTrue(gw.alive(), "warden died when its descriptors ran out")
        finally:
            for s in socks:
                s.close()

        deadline = time.monotonic() + 15
        while True:
            try:
                c = gw.device_client(dev, key, timeout=5.0)
                break
            except Exception as e:  # noqa: BLE001 - any failure to connect is retried until the deadline
                if time.monotonic() > deadline:
                    self.fail("no device could connect after the descriptors were freed: %s\n%s"
                              % (e, gw.stderr()[-2000:]))
                time.sleep(0.2)
        self.addCleanup(c.close)
        sender = c.sender("telemetry")
        self.assertEqual(sender.send(telemetry_message(b"after exhaustion", msg_id=new_id("m"))), ACCEPTED)


if __name__ == "__main__":
    unittest.main()
