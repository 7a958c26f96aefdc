"""What the AMQPS listener does, pinned before warden's TLS moves from Proton's pn_ssl
(inside the transport) to warden's own OpenSSL code over raw connections, with its own
heartbeat and idle-time-out ticking for TLS connections. test_18 covers the TLS policy
(versions, ciphers, resumption), test_01 logins over TLS, test_20 idle time-outs over
plain TCP; this file covers the rest, all over TLS:

- large messages cross TLS intact, both ways, also both at once on one connection,
  and the size limit still applies;
- volume: 5 000 telemetry messages with ~100 unsettled, all accepted, all read in order;
- warden sends empty frames in time for a client's short idle time-out, and holds a
  silent TLS peer to its own (also a device's longer) idle time-out;
- the handshake and the SASL exchange are bounded in time; peers that vanish mid
  handshake or mid connection are cleaned up at once; non-TLS bytes on the port are
  cut off and never get a cleartext PLAIN login;
- a clean AMQP close gets warden's close frame and a TLS close_notify, and every one of
  these leaves the connection gauges where they were.

Connection accounting uses /metrics: warden_connections{kind=...} (live, authenticated)
and warden_connections_accepted_total - warden_connections_closed_total (every socket).
"""

import hashlib
import os
import random
import socket
import ssl
import struct
import threading
import time
import unittest

from proton import ConnectionException, Endpoint, Message
from proton.utils import BlockingConnection

from limits_helpers import (AMQP_HEADER, CLOSE, OPEN, SASL_HEADER, SASL_MECHANISMS, SASL_OUTCOME, RawAmqp,
                            close_frame, decode_frame_body, metric_value, open_frame, sasl_init_plain)
from warden_harness import (ACCEPTED, DEFAULT_SERVICES, REJECTED, AmqpClient, LinkRefused, TestPKI, WardenTestCase,
                            connect_error, new_id, sas_token, wait_until)

OPS_SECRET = "ops-secret-for-tls-tests"
SERVICES = dict(DEFAULT_SERVICES)
SERVICES["ops"] = (OPS_SECRET, "commands:send")

MAX_MESSAGE = 1024 * 1024           # [amqp] max_message_size of the traffic gateway
BIG_TELEMETRY = 512 * 1024          # crosses many TLS records and 64 KiB AMQP frames
BIG_COMMAND = 200 * 1024
VOLUME = 5000
IN_FLIGHT = 100
HOSTILE_SECONDS = 8


# --------------------------------------------------------------------------
# helpers

def metrics(gw):
    """The connection metrics: accepted, closed, open (= accepted - closed), device, service."""
    r = gw.rest("GET", "/metrics")
    if r.status != 200:
        raise AssertionError("GET /metrics: %r" % r)
    text = r.body.decode("utf-8", "replace")

    def val(name):
        v = metric_value(text, name)
        if v is None:
            raise AssertionError("%s missing from /metrics" % name)
        return v

    out = {"accepted": val("warden_connections_accepted_total"), "closed": val("warden_connections_closed_total"),
           "device": val('warden_connections{kind="device"}'), "service": val('warden_connections{kind="service"}')}
    out["open"] = out["accepted"] - out["closed"]
    return out


def quiet_metrics(gw, timeout=5.0):
    """Metrics once no socket is open any more (connections of earlier tests are gone), or after timeout."""
    m = wait_until(lambda: (lambda v: v if v["open"] == 0 else None)(metrics(gw)), timeout, interval=0.05)
    return m or metrics(gw)


def client_hello(tls12=False):
    """A real TLS ClientHello, as Python's OpenSSL writes it for localhost (offering TLS 1.2 at most
    with tls12)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert len(hello) > 100 and hello[0] == 0x16, "not a ClientHello: %r" % hello[:16]
    return hello


def read_until_closed(sock, timeout):
    """Reads until the peer closes (EOF or reset). Returns (bytes, seconds) - seconds None if still open."""
    start = time.monotonic()
    deadline = start + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, None
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def cleartext_frames(data):
    """The SASL/AMQP frames (limits_helpers.Frame) in bytes warden sent in the clear."""
    out = []
    while len(data) >= 8:
        if data[:4] == b"AMQP":
            data = data[8:]
            continue
        size, doff, type_, channel = struct.unpack(">IBBH", data[:8])
        if size < 8 or doff < 2 or size > len(data):
            break
        try:
            out.append(decode_frame_body(type_, channel, data[doff * 4:size]))
        except Exception:  # noqa: BLE001 - not a frame: stop
            break
        data = data[size:]
    return out


def served(frames):
    """True if these frames show a connection warden served: an open not followed at once by a close
    with an error (Proton answers bytes it cannot make sense of with an open and such a close),
    or a successful sasl-outcome."""
    for i, f in enumerate(frames):
        if f.code == SASL_OUTCOME and f.field(0) is not None and int(f.field(0)) == 0:
            return True
        if f.code == OPEN:
            nxt = frames[i + 1] if i + 1 < len(frames) else None
            if nxt is None or nxt.code != CLOSE or not nxt.condition():
                return True
    return False


def mechanism_names(value):
    """The mechanisms of a sasl-mechanisms frame (a symbol or an array of them) as strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [str(value)]
    return [str(m) for m in value]


class TlsRaw(RawAmqp):
    """RawAmqp (limits_helpers) over TLS, with Python's ssl module: frames exactly as the test
    writes them, no heartbeats unless the test sends them. Records how the stream ended:
    'close_notify' (a clean TLS shutdown), 'abrupt' (EOF without close_notify) or 'reset'."""

    def __init__(self, port, ca, timeout=5.0):
        RawAmqp.__init__(self, port, timeout=timeout)
        ctx = ssl.create_default_context(cafile=ca)
        # Python ignores a missing close_notify by default; here it must show.
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost", suppress_ragged_eofs=False)
        except Exception:
            self.sock.close()
            raise

    CLEAN_END = "close_notify"  # with suppress_ragged_eofs off, a clean end is a TLS close_notify

    def _recv(self):
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise
        except ssl.SSLError as e:
            raise self._ended("abrupt (%s)" % e)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise self._ended("reset (%s)" % e)


class HeartbeatClient(AmqpClient):
    """An AmqpClient that advertises its own idle time-out (seconds) in its open."""

    def __init__(self, url, user, password, ssl_domain, heartbeat, timeout=10.0):
        self.url = url
        self.timeout = timeout
        self.closed = False
        self.bc = BlockingConnection(url, timeout=timeout, ssl_domain=ssl_domain, heartbeat=heartbeat, user=user,
                                     password=password, allowed_mechs="PLAIN", allow_insecure_mechs=True,
                                     sasl_enabled=True)


class TlsCase(WardenTestCase):
    def tls_device(self, gw, dev=None, key=None, timeout=10.0):
        if dev is None:
            dev, key = gw.create_device()
        return dev, key, self.device_client(gw, dev, key, tls=True, timeout=timeout)

    def tls_raw(self, gw, timeout=5.0):
        c = TlsRaw(gw.ports["amqps"], gw.server_ca, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def assertServing(self, gw):
        """warden is up, answers REST, and a device logs in over TLS and gets telemetry accepted."""
        gw.assert_alive()
        self.assertEqual(gw.rest("GET", "/healthz", token=None, timeout=5).status, 200)
        _, _, c = self.tls_device(gw)
        self.assertEqual(c.sender("telemetry").send(Message(id=new_id("alive"), body=b"still serving")), ACCEPTED)
        c.close()

    def assertNeverSeen(self, dev, why):
        rec = self.gw.rest("GET", "/v1/devices/" + dev).json
        self.assertIn("lastSeen", rec)
        self.assertIsNone(rec["lastSeen"], "device %s was seen: %s" % (dev, why))

    def assertOpenBackTo(self, gw, before, within, what):
        """Every socket counted since `before` is closed again within `within` seconds."""
        got = wait_until(lambda: metrics(gw)["open"] <= before["open"], within, interval=0.05)
        now = metrics(gw)
        self.assertTrue(got, "%s: %d connection(s) still open %.1f s later (accepted %d, closed %d; %d before)"
                        % (what, now["open"] - before["open"], within, now["accepted"], now["closed"], before["open"]))
        return now


# --------------------------------------------------------------------------
# one gateway on the harness defaults (dev mode, idle_timeout 120 s, sasl_timeout 10 s)
# with room for 1 MiB messages and no device rate limit

class TlsTrafficTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(services=SERVICES, sections={
            "amqp": {"max_message_size": str(MAX_MESSAGE), "device_rate": "0"}})

    # -- 1. large payloads ----------------------------------------------------------------

    def read_telemetry(self, ids, dev, timeout=20.0, tls=True):
        svc = self.service_client(self.gw, tls=tls)
        got = self.read_group(self.gw, new_id("g"), want_ids=ids, device=dev, timeout=timeout, client=svc)
        svc.close()
        return got

    def test_large_telemetry_crosses_tls_intact(self):
        dev, _, c = self.tls_device(self.gw)
        body = os.urandom(BIG_TELEMETRY)
        mid = new_id("big")
        self.assertEqual(c.sender("telemetry").send(Message(id=mid, body=body), timeout=20), ACCEPTED,
                         "a %d KiB telemetry message over TLS was not accepted" % (BIG_TELEMETRY // 1024))
        got = self.read_telemetry([mid], dev)
        self.assertEqual([m.id for m in got], [mid], "the large message did not reach a TLS consumer")
        self.assertEqual(len(got[0].body), len(body))
        self.assertEqual(hashlib.sha256(got[0].body).hexdigest(), hashlib.sha256(body).hexdigest(),
                         "the payload changed on its way through TLS")

    def test_large_command_crosses_tls_intact(self):
        dev, key, c = self.tls_device(self.gw)
        r = c.receiver("commands")
        ops = self.service_client(self.gw, "ops", tls=True)
        body = os.urandom(BIG_COMMAND)
        mid = new_id("cmd")
        self.assertEqual(ops.sender("devices/%s/commands" % dev).send(Message(id=mid, body=body), timeout=20), ACCEPTED,
                         "a %d KiB command over TLS was not accepted" % (BIG_COMMAND // 1024))
        got = r.receive(1, timeout=15)
        self.assertEqual(len(got), 1, "the large command did not reach the device over TLS")
        self.assertEqual(got[0].id, mid)
        self.assertEqual(hashlib.sha256(got[0].body).hexdigest(), hashlib.sha256(body).hexdigest(),
                         "the command payload changed on its way through TLS")

    def test_large_messages_both_ways_at_once_on_one_connection(self):
        """A large command is written to the device while the device writes large telemetry:
        reads and writes interleave on one TLS session."""
        dev, key, c = self.tls_device(self.gw)
        ops = self.service_client(self.gw, "ops", tls=True)
        down = [os.urandom(BIG_COMMAND) for _ in range(2)]
        down_ids = [new_id("down") for _ in down]
        snd = ops.sender("devices/%s/commands" % dev)
        for mid, body in zip(down_ids, down):
            self.assertEqual(snd.send(Message(id=mid, body=body), timeout=20), ACCEPTED)
        up = [os.urandom(BIG_TELEMETRY) for _ in range(2)]
        up_ids = [new_id("up") for _ in up]
        r = c.receiver("commands")
        s = c.sender("telemetry")
        c.wait(lambda: s.credit >= 2, 5)
        r.link.flow(len(down))                    # the commands start flowing in ...
        tags = [s.send_async(Message(id=mid, body=body)).tag for mid, body in zip(up_ids, up)]   # ... as we write
        c.wait(lambda: all(t in s.h.outcomes for t in tags) and len(r.h.incoming) >= len(down), 30)
        self.assertEqual([s.h.outcomes.get(t) for t in tags], [ACCEPTED] * len(up), "telemetry not accepted")
        got = r.take()
        self.assertEqual([m.id for m, _ in got], down_ids, "commands lost while the device was sending")
        for (m, d), body in zip(got, down):
            self.assertEqual(m.body, body, "a command changed on its way through TLS")
            r.settle(d, ACCEPTED, pump=False)
        c.pump()
        back = self.read_telemetry(up_ids, dev)
        self.assertEqual([m.id for m in back], up_ids)
        for m, body in zip(back, up):
            self.assertEqual(m.body, body, "telemetry changed on its way through TLS")

    def test_the_size_limit_still_applies_over_tls(self):
        _, _, c = self.tls_device(self.gw)
        s = c.sender("telemetry")
        try:
            state = s.send(Message(id=new_id("huge"), body=b"\x01" * (MAX_MESSAGE + 64 * 1024)), timeout=20)
        except (LinkRefused, AssertionError) as e:
            self.assertTrue(s.closed_by_peer, "no outcome and the link stayed attached: %s" % e)
            self.assertEqual((s.condition or (None,))[0], "amqp:link:message-size-exceeded", s.condition)
        else:
            self.assertEqual(state, REJECTED, "a message over max_message_size was accepted over TLS")
        self.assertEqual(c.sender("telemetry").send(Message(id=new_id("after"), body=b"x")), ACCEPTED,
                         "the TLS connection was unusable after an oversized message")

    # -- 2. volume ------------------------------------------------------------------------

    def test_five_thousand_messages_with_a_hundred_unsettled(self):
        dev, _, c = self.tls_device(self.gw)
        s = c.sender("telemetry")
        ids = ["vol-%05d" % i for i in range(VOLUME)]
        tags = []
        most_in_flight = 0
        deadline = time.monotonic() + 40
        while len(s.h.outcomes) < VOLUME:
            self.assertLess(time.monotonic(), deadline, "only %d of %d outcomes after 40 s" % (len(s.h.outcomes), VOLUME))
            while len(tags) < VOLUME and len(tags) - len(s.h.outcomes) < IN_FLIGHT and s.credit > 0:
                i = len(tags)
                tags.append(s.send_async(Message(id=ids[i], body=b"reading %d" % i)).tag)
            most_in_flight = max(most_in_flight, len(tags) - len(s.h.outcomes))
            done = len(s.h.outcomes)
            c.wait(lambda: len(s.h.outcomes) > done or s.h.remote_closed, 5)
            self.assertFalse(s.h.remote_closed, "warden detached the sender: %r" % (s.h.condition,))
        states = [s.h.outcomes[t] for t in tags]
        self.assertEqual(states.count(ACCEPTED), VOLUME, "not every message was accepted: %d of %d"
                         % (states.count(ACCEPTED), VOLUME))
        self.assertGreaterEqual(most_in_flight, IN_FLIGHT // 2, "the sender never had many messages unsettled")
        got = self.read_telemetry(ids, dev, timeout=40)
        self.assertEqual(len(got), VOLUME, "the consumer got %d of %d" % (len(got), VOLUME))
        self.assertEqual([m.id for m in got], ids, "messages out of order (or duplicated)")
        self.assertEqual([m.body for m in got], [b"reading %d" % i for i in range(VOLUME)])
        print("%d messages over TLS, at most %d unsettled" % (VOLUME, most_in_flight))

    # -- 3. warden's heartbeats -----------------------------------------------------------

    def test_warden_sends_empty_frames_for_a_clients_short_idle_timeout(self):
        """The client says it drops a peer silent for 4 s and itself sends nothing for 12 s;
        Proton's client enforces that (local-idle-timeout expired), so it stays only if warden
        writes (empty) frames at least every 4 s."""
        dev, key = self.gw.create_device()
        c = self.track(HeartbeatClient(self.gw.amqps_url, dev, sas_token(dev, key), self.gw.client_ssl_domain(),
                                       heartbeat=4))
        s = c.sender("telemetry")
        self.assertEqual(s.send(Message(id=new_id("before"), body=b"x")), ACCEPTED)
        t = c.conn.transport
        self.assertEqual(t.idle_timeout, 4.0)
        frames_in, frames_out = t.frames_input, t.frames_output
        try:
            c.wait(lambda: False, 12.0)
        except ConnectionException as e:
            self.fail("warden let a client with a 4 s idle time-out time out: %s" % e)
        heard = t.frames_input - frames_in
        print("in 12 s of client silence warden sent %d frames; the client sent %d" % (heard, t.frames_output - frames_out))
        self.assertGreaterEqual(heard, 3, "warden sent %d frames in 12 s to a peer with a 4 s idle time-out" % heard)
        self.assertEqual(s.send(Message(id=new_id("after"), body=b"still here")), ACCEPTED)

    def test_a_sub_second_idle_timeout_is_kept_on_both_ports(self):
        """A client that drops a peer silent for 0.8 s: warden's heartbeats (every 0.4 s) must
        not wait for its once-a-second housekeeping, on plain TCP as on TLS."""
        for url, domain in ((self.gw.amqp_url, None), (self.gw.amqps_url, self.gw.client_ssl_domain())):
            dev, key = self.gw.create_device()
            c = self.track(HeartbeatClient(url, dev, sas_token(dev, key), domain, heartbeat=0.8))
            s = c.sender("telemetry")
            t = c.conn.transport
            frames_in = t.frames_input
            try:
                c.wait(lambda: False, 4.0)
            except ConnectionException as e:
                self.fail("%s: warden let a client with a 0.8 s idle time-out time out: %s" % (url, e))
            self.assertGreaterEqual(t.frames_input - frames_in, 8, url)
            self.assertEqual(s.send(Message(id=new_id("after"), body=b"still here")), ACCEPTED)

    # -- 5. what is not TLS -----------------------------------------------------------------

    def test_a_plain_amqp_client_on_the_tls_port_never_gets_in(self):
        before = quiet_metrics(self.gw)
        dev, key = self.gw.create_device()
        started = time.monotonic()
        err = connect_error(lambda: AmqpClient("amqp://127.0.0.1:%d" % self.gw.ports["amqps"], dev,
                                               sas_token(dev, key), timeout=8))
        took = time.monotonic() - started
        self.assertIsNotNone(err, "a plain AMQP client opened a connection on the TLS port")
        self.assertLess(took, 3.0, "a plain AMQP client on the TLS port was kept %.1f s" % took)
        self.assertNeverSeen(dev, "it got a connection in cleartext on the TLS port")
        self.assertOpenBackTo(self.gw, before, 3.0, "a plain AMQP client on the TLS port")
        self.assertServing(self.gw)

    def test_bytes_that_are_not_tls_are_cut_off_at_once(self):
        before = quiet_metrics(self.gw)
        dev, key = self.gw.create_device()
        # dev_mode allows PLAIN in the clear, but only on the plain port: the TLS port speaks TLS alone
        login = SASL_HEADER + sasl_init_plain(dev, sas_token(dev, key)) + AMQP_HEADER + open_frame()
        for what, payload in (("an HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
                              ("the plain AMQP header", AMQP_HEADER + open_frame()),
                              ("a pipelined cleartext PLAIN login", login),
                              ("zeros", b"\x00" * 64),
                              ("a TLS record of an unknown type", b"\x17\x03\x03\x00\x10" + b"\xaa" * 16)):
            sock = socket.create_connection(("127.0.0.1", self.gw.ports["amqps"]), timeout=5)
            try:
                sock.sendall(payload)
                data, took = read_until_closed(sock, 5.0)
            finally:
                sock.close()
            self.assertIsNotNone(took, "%s on the TLS port: still open after 5 s" % what)
            self.assertLess(took, 2.0, "%s on the TLS port: closed only after %.1f s" % (what, took))
            self.assertFalse(served(cleartext_frames(data)), "%s on the TLS port was served in the clear: %r"
                             % (what, cleartext_frames(data)))
        self.assertNeverSeen(dev, "it logged in in cleartext on the TLS port")
        self.assertOpenBackTo(self.gw, before, 3.0, "non-TLS bytes")
        self.assertServing(self.gw)

    def test_not_amqp_inside_tls_is_cut_off_at_once(self):
        before = quiet_metrics(self.gw)
        c = self.tls_raw(self.gw)
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        took = c.wait_closed(5.0)
        self.assertIsNotNone(took, "HTTP inside TLS: the connection stayed open")
        self.assertLess(took, 2.0)
        self.assertOpenBackTo(self.gw, before, 3.0, "HTTP inside TLS")

    def test_half_client_hellos_then_close_leave_nothing_behind(self):
        before = quiet_metrics(self.gw)
        hello = client_hello()
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", self.gw.ports["amqps"]), timeout=5)
            try:
                sock.sendall(hello[:len(hello) // 2])
            finally:
                sock.close()
        # all accepted (some wait in the listen backlog for a moment) ...
        self.assertTrue(wait_until(lambda: metrics(self.gw)["accepted"] - before["accepted"] >= 100, 4.0),
                        "warden did not accept (or count) the 100 connections: %r" % metrics(self.gw))
        # ... and all closed well inside sasl_timeout (10 s): the end of the stream must end
        # each connection, not a deadline
        after = self.assertOpenBackTo(self.gw, before, 4.0, "100 half ClientHellos then FIN")
        self.assertEqual((after["device"], after["service"]), (before["device"], before["service"]))
        self.assertServing(self.gw)

    def test_a_full_handshake_then_close_leaves_nothing_behind(self):
        before = quiet_metrics(self.gw)
        for _ in range(20):
            TlsRaw(self.gw.ports["amqps"], self.gw.server_ca).close()
        self.assertOpenBackTo(self.gw, before, 4.0, "20 TLS handshakes then FIN")
        self.assertServing(self.gw)

    # -- 6. closing ---------------------------------------------------------------------------

    def test_a_clean_close_gets_the_close_frame_and_the_gauge_goes_down(self):
        before = quiet_metrics(self.gw)
        dev, key, c = self.tls_device(self.gw)
        self.assertTrue(wait_until(lambda: metrics(self.gw)["device"] == before["device"] + 1, 3.0),
                        "the device gauge did not count a TLS device")
        c.conn.close()
        try:
            c.wait(lambda: c.conn.state & Endpoint.REMOTE_CLOSED, 5.0)
        except ConnectionException:
            pass  # the socket ends right after the close frame; the state says whether it came
        self.assertTrue(c.conn.state & Endpoint.REMOTE_CLOSED, "no close frame from warden within 5 s")
        self.assertIsNone(c.remote_condition(), "warden answered a clean close with an error")
        c.close()
        after = self.assertOpenBackTo(self.gw, before, 3.0, "a clean TLS close")
        self.assertEqual(after["device"], before["device"], "the device gauge did not go back down")

    def test_a_clean_close_ends_with_a_tls_close_notify(self):
        """At the byte level: close -> warden's close frame, then a TLS close_notify (a clean shutdown,
        so the peer can tell the end from a truncation), then the socket closes."""
        before = quiet_metrics(self.gw)
        dev, key = self.gw.create_device()
        c = self.tls_raw(self.gw)
        c.login(dev, sas_token(dev, key))
        c.send(close_frame())
        took = c.wait_closed(5.0)
        self.assertIsNotNone(took, "warden did not close the socket within 5 s of a close")
        closes = [f for f in c.frames if f.code == CLOSE]
        self.assertEqual(len(closes), 1, "no close frame from warden: %r" % c.frames[-3:])
        self.assertIsNone(closes[0].condition(), "warden answered a clean close with an error")
        self.assertEqual(c.ending, "close_notify", "the TLS session ended without a close_notify: %s" % c.ending)
        # our end stays open: the closed connection must not keep a slot, nor count as a connected device
        after = self.assertOpenBackTo(self.gw, before, 3.0, "a clean close, the peer's socket still open")
        self.assertEqual(after["device"], before["device"], "a device that closed still counts as connected")
        c.close()

    def test_a_peer_that_vanishes_is_cleaned_up_at_once(self):
        """A device that goes away without a close (FIN, or RST) is gone from the gauges at once,
        not after the idle time-out (120 s here)."""
        before = quiet_metrics(self.gw)
        dev, key = self.gw.create_device()
        for how in ("fin", "rst"):
            c = self.tls_raw(self.gw)
            c.login(dev, sas_token(dev, key))
            self.assertTrue(wait_until(lambda: metrics(self.gw)["device"] == before["device"] + 1, 3.0),
                            "the device gauge did not count the raw TLS device")
            raw = c.sock
            if how == "rst":
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
            after = self.assertOpenBackTo(self.gw, before, 3.0, "a device that vanished (%s)" % how)
            self.assertEqual(after["device"], before["device"], "the device gauge kept a vanished device (%s)" % how)
        self.assertEqual(self.gw.rest("GET", "/v1/devices/" + dev).json.get("connected"), False)
        self.assertServing(self.gw)

    def test_hostile_tls_traffic_leaves_warden_serving(self):
        """Four clients, for HOSTILE_SECONDS, each connection one of: a mutated ClientHello, a
        handshake then random bytes (after a protocol header, or a login), a handshake then raw
        records that are not TLS, half a ClientHello then a reset. Many end in a reset. warden
        must stay up (under the sanitizers too), cut off at once a connection whose record fails
        to authenticate, let every socket go, and serve a device after.
        The run is seeded (WARDEN_IT_SEED) so that a failure can be replayed."""
        seed = int(os.environ.get("WARDEN_IT_SEED", "2026"))
        dev, key = self.gw.create_device()
        port, ca = self.gw.ports["amqps"], self.gw.server_ca
        hellos = [client_hello(), client_hello(tls12=True)]
        login = SASL_HEADER + sasl_init_plain(dev, sas_token(dev, key)) + AMQP_HEADER + open_frame("hostile")
        before = quiet_metrics(self.gw)
        stop = time.time() + HOSTILE_SECONDS
        done, errors = [0], []

        ctx = ssl.create_default_context(cafile=ca)  # one for every client: the CA is read once

        def tcp():
            return socket.create_connection(("127.0.0.1", port), timeout=5)

        def tls():
            return ctx.wrap_socket(tcp(), server_hostname="localhost")

        def reset(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        def finish(sock, rng, must_close=None):
            """Reads until warden ends the stream (at most 0.3 s, or 3 s when warden must close it:
            must_close names why), or resets the connection instead."""
            if rng.random() < 0.3 and not must_close:
                reset(sock)
                return
            sock.settimeout(3.0 if must_close else 0.3)
            try:
                while sock.recv(65536):
                    pass
            except socket.timeout:
                if must_close:
                    errors.append("warden kept the connection open after %s" % must_close)
            except (OSError, ssl.SSLError):
                pass
            sock.close()

        def mutated_hello(rng):
            b = bytearray(rng.choice(hellos))
            for _ in range(rng.randint(1, 12)):
                at = rng.randrange(len(b))
                op = rng.randrange(4)
                if op == 0:
                    b[at] = rng.randrange(256)
                elif op == 1:
                    del b[at:]
                elif op == 2:
                    b[at:at] = rng.randbytes(rng.randint(1, 64))
                elif len(b) > 5:
                    struct.pack_into(">H", b, 3, rng.randrange(65536))  # the record length
                if not b:
                    b = bytearray(b"\x16")
            sock = tcp()
            sock.sendall(bytes(b))
            finish(sock, rng)

        def random_plaintext(rng):
            sock = tls()
            head = rng.choice([b"", AMQP_HEADER, SASL_HEADER, login])
            sock.sendall(head + rng.randbytes(rng.randint(0, 3000)))
            finish(sock, rng)

        def login_then_frames(rng):
            sock = tls()
            sock.sendall(login)
            frames = b""
            for _ in range(rng.randint(1, 20)):
                body = rng.randbytes(rng.randint(0, 200))
                if rng.random() < 0.6:  # a described performative, so the engine gets further
                    body = b"\x00\x53" + bytes([rng.randrange(0x10, 0x19)]) + body
                frames += struct.pack(">IBBH", 8 + len(body), 2, 0, rng.randrange(4)) + body
            sock.sendall(frames)
            finish(sock, rng)

        def records_not_tls(rng):
            sock = tls()
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            if rng.random() < 0.5:  # a whole application-data record that cannot authenticate
                body = rng.randbytes(rng.randint(17, 2000))
                record, must_close = b"\x17\x03\x03" + struct.pack(">H", len(body)) + body, "a forged record"
            else:  # any header, any length, any bytes
                header = bytes([rng.choice([20, 21, 22, 23, 24])]) + b"\x03\x03" + struct.pack(">H", rng.randint(0, 17000))
                record, must_close = header + rng.randbytes(rng.randint(0, 2000)), None
            try:
                raw.sendall(record)
                # read beneath TLS: an alert alone is not the end of the connection
                finish(raw, rng, must_close)
            finally:
                raw.close()
                sock.close()

        def half_hello_then_reset(rng):
            sock = tcp()
            hello = rng.choice(hellos)
            sock.sendall(hello[:rng.randrange(1, len(hello))])
            reset(sock)

        kinds = [mutated_hello, random_plaintext, login_then_frames, records_not_tls, half_hello_then_reset]

        def client(n):
            rng = random.Random(seed * 10 + n)
            while time.time() < stop and not errors:
                try:
                    rng.choice(kinds)(rng)
                except (OSError, ssl.SSLError):
                    pass  # warden cut it off: expected
                except Exception as e:  # a bug in the test itself
                    errors.append(repr(e))
                done[0] += 1
                if not self.gw.alive():
                    errors.append("warden exited")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HOSTILE_SECONDS + 30)
        self.assertEqual(errors, [], "seed %d, after %d connections" % (seed, done[0]))
        self.assertGreater(done[0], 100, "too few hostile connections to mean anything")
        self.assertOpenBackTo(self.gw, before, 10.0, "seed %d: %d hostile connections" % (seed, done[0]))
        self.assertServing(self.gw)

# --------------------------------------------------------------------------
# 4. deadlines: warden's idle time-out and the handshake/SASL deadline over TLS, on a
# production-like gateway (dev_mode off: PLAIN only inside TLS)

class TlsDeadlineTest(TlsCase):
    SASL_TIMEOUT = 2

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.pki_dir = tempfile.mkdtemp(prefix="warden-it-pki-")
        pki = TestPKI(cls.pki_dir)
        cls.gw = cls.start_class_gateway(dev_mode=False, tls_cert=pki.server_pem, tls_key=pki.server_key,
                                         server_ca=pki.ca_pem, sections={"amqp": {
                                             "idle_timeout": "1", "max_idle_timeout": "4",
                                             "sasl_timeout": str(cls.SASL_TIMEOUT)}})
        cls.dev, cls.key = cls.gw.create_device()

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.pki_dir, ignore_errors=True)

    def silent_for(self, idle_ms):
        """Logs in over TLS (asking for idle_ms, or nothing) and then sends nothing at all.
        Returns (seconds until warden dropped it or None, the raw client)."""
        c = self.tls_raw(self.gw)
        c.login(self.dev, sas_token(self.dev, self.key), idle_ms=idle_ms)
        return c.wait_closed(10.0), c

    def test_a_silent_tls_peer_is_dropped_after_the_idle_timeout(self):
        before = quiet_metrics(self.gw)
        took, _ = self.silent_for(None)
        self.assertIsNotNone(took, "a silent TLS peer was never dropped (idle_timeout 1 s)")
        self.assertGreater(took, 0.8, "dropped before the idle time-out")
        self.assertLess(took, 3.0, "a silent TLS peer was kept %.1f s with idle_timeout 1 s" % took)
        self.assertOpenBackTo(self.gw, before, 3.0, "a silent TLS peer")
        self.assertServing(self.gw)

    def test_a_sleeping_tls_device_gets_its_longer_timeout_and_heartbeats(self):
        took, c = self.silent_for(3000)
        self.assertIsNotNone(took)
        self.assertGreater(took, 2.5, "the device's longer idle time-out (3 s) was not honoured over TLS")
        self.assertLess(took, 6.0)
        empty = [f for f in c.frames if f.code is None]
        self.assertTrue(empty, "warden sent no empty frame to a TLS peer with a 3 s idle time-out")

    def test_a_longer_request_is_capped_over_tls(self):
        took, _ = self.silent_for(60000)
        self.assertIsNotNone(took, "a TLS device asking for 60 s was kept beyond max_idle_timeout (4 s)")
        self.assertGreater(took, 3.5)
        self.assertLess(took, 8.0)

    def test_a_tls_client_that_answers_with_heartbeats_stays(self):
        c = self.device_client(self.gw, self.dev, self.key, tls=True)
        try:
            c.pump(3.0)  # python-proton answers warden's 1 s idle time-out with empty frames
        except ConnectionException as e:
            self.fail("warden dropped a TLS client that sends heartbeats: %s" % e)
        self.assertEqual(c.sender("telemetry").send(Message(id=new_id("hb"), body=b"x")), ACCEPTED)

    def test_handshake_and_sasl_are_bounded_in_time(self):
        """Peers that hold a connection without finishing the TLS handshake or the SASL exchange
        are cut off by the SASL deadline (sasl_timeout 2 s here)."""
        before = quiet_metrics(self.gw)
        hello = client_hello()
        socks = {}

        def connect(name, payload=b""):
            s = socket.create_connection(("127.0.0.1", self.gw.ports["amqps"]), timeout=5)
            self.addCleanup(s.close)
            if payload:
                s.sendall(payload)
            socks[name] = s

        connect("silent after connecting")
        connect("half a ClientHello", hello[:len(hello) // 2])
        connect("a whole ClientHello, nothing after", hello)
        handshaken = self.tls_raw(self.gw)              # TLS done, no SASL header
        sasl_waiting = self.tls_raw(self.gw)            # TLS and the SASL header, no sasl-init
        sasl_waiting.sasl_mechanisms()
        bound = self.SASL_TIMEOUT + 2.5
        results = {}

        def watch(name, fn):
            results[name] = fn()

        threads = [threading.Thread(target=watch, args=(n, (lambda s=s: read_until_closed(s, bound)[1])))
                   for n, s in socks.items()]
        threads += [threading.Thread(target=watch, args=("TLS handshake, then nothing",
                                                          lambda: handshaken.wait_closed(bound))),
                    threading.Thread(target=watch, args=("TLS and the SASL header, no sasl-init",
                                                          lambda: sasl_waiting.wait_closed(bound)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(bound + 5)
        self.assertEqual(len(results), 5, "a watcher did not finish: %r" % results)
        kept = sorted(name for name, took in results.items() if took is None)
        self.assertFalse(kept, "still open %.1f s later (sasl_timeout %d s): %s" % (bound, self.SASL_TIMEOUT, kept))
        self.assertOpenBackTo(self.gw, before, 2.0, "connections cut off by the SASL deadline")
        self.assertServing(self.gw)

    def test_cleartext_on_the_tls_port_never_gets_a_plain_login(self):
        """dev_mode off: PLAIN exists only inside TLS. A cleartext SASL exchange on the TLS port is
        never offered PLAIN, a valid cleartext login never succeeds, and nothing gets an open."""
        before = quiet_metrics(self.gw)
        dev, key = self.gw.create_device()
        login = SASL_HEADER + sasl_init_plain(dev, sas_token(dev, key)) + AMQP_HEADER + open_frame()
        for what, payload in (("the SASL header", SASL_HEADER), ("a pipelined PLAIN login", login)):
            sock = socket.create_connection(("127.0.0.1", self.gw.ports["amqps"]), timeout=5)
            try:
                sock.sendall(payload)
                data, took = read_until_closed(sock, self.SASL_TIMEOUT + 2.5)
            finally:
                sock.close()
            self.assertIsNotNone(took, "%s in the clear: still open after the SASL deadline" % what)
            self.assertLess(took, 1.5, "%s in the clear on the TLS port: kept %.1f s" % (what, took))
            frames = cleartext_frames(data)
            self.assertEqual(frames, [], "%s in the clear: warden answered in the clear" % what)
            for f in frames:
                if f.code == SASL_MECHANISMS:
                    self.assertNotIn("PLAIN", mechanism_names(f.field(0)),
                                     "warden offered PLAIN in the clear on its TLS port")
            self.assertFalse(served(frames), "%s in the clear on the TLS port was served: %r" % (what, frames))
        self.assertNeverSeen(dev, "it got in in cleartext on the TLS port")
        self.assertOpenBackTo(self.gw, before, 2.0, "cleartext SASL on the TLS port")
        self.assertServing(self.gw)


if __name__ == "__main__":
    unittest.main()
