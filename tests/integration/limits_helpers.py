"""Helpers for test_17_limits.py: a raw AMQP 1.0 client on a plain socket.

python-proton obeys the limits it is told (frame size, channel-max) and cannot bind a source
address, so the limit tests speak the protocol themselves: a tiny encoder for the few AMQP
types and performatives they send (SASL init, open, begin, attach, transfer, detach, end,
close), frames read with bounded waits, and proton's Data only to decode what warden sends.

Every socket is bounded by timeouts and closed by the test that opened it; nothing here
starts a process.
"""

import socket
import struct
import time

from proton import Data, Described

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"

FRAME_AMQP = 0
FRAME_SASL = 1

# performative and section descriptors
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)
SOURCE, TARGET = 0x28, 0x29
ACCEPTED_STATE, REJECTED_STATE = 0x24, 0x25
DATA_SECTION = 0x75

NAMES = {OPEN: "open", BEGIN: "begin", ATTACH: "attach", FLOW: "flow", TRANSFER: "transfer",
         DISPOSITION: "disposition", DETACH: "detach", END: "end", CLOSE: "close",
         SASL_MECHANISMS: "sasl-mechanisms", SASL_INIT: "sasl-init", SASL_CHALLENGE: "sasl-challenge",
         SASL_RESPONSE: "sasl-response", SASL_OUTCOME: "sasl-outcome"}

SASL_OK, SASL_AUTH = 0, 1


# --------------------------------------------------------------------------
# a tiny AMQP 1.0 type encoder (only what the tests send)

def null():
    return b"\x40"


def boolean(v):
    return b"\x41" if v else b"\x42"


def ubyte(v):
    return b"\x50" + struct.pack(">B", v)


def ushort(v):
    return b"\x60" + struct.pack(">H", v)


def uint(v):
    return b"\x70" + struct.pack(">I", v)


def _var(code8, code32, raw):
    if len(raw) < 256:
        return bytes([code8, len(raw)]) + raw
    return bytes([code32]) + struct.pack(">I", len(raw)) + raw


def binary(b):
    return _var(0xa0, 0xb0, bytes(b))


def string(s):
    return _var(0xa1, 0xb1, s.encode("utf-8"))


def symbol(s):
    return _var(0xa3, 0xb3, s.encode("ascii"))


def lst(*items):
    """A list (list32 encoding: size counts the count field and the items)."""
    body = b"".join(items)
    return b"\xd0" + struct.pack(">II", len(body) + 4, len(items)) + body


def described(code, value):
    """A value described by a small ulong descriptor (all of AMQP's performatives and sections)."""
    return b"\x00\x53" + bytes([code]) + value


def frame(body, type_=FRAME_AMQP, channel=0, size=None):
    """One frame (doff 2); `size` overrides the size field (to lie about it)."""
    n = 8 + len(body) if size is None else size
    return struct.pack(">IBBH", n, 2, type_, channel) + body


def sasl_init_plain(user, password, authzid=""):
    resp = ("%s\0%s\0%s" % (authzid, user, password)).encode("utf-8")
    return frame(described(SASL_INIT, lst(symbol("PLAIN"), binary(resp))), FRAME_SASL)


def open_frame(container="raw-client", max_frame=1 << 20, channel_max=65535, hostname="localhost", idle_ms=None):
    fields = [string(container), string(hostname), uint(max_frame), ushort(channel_max)]
    if idle_ms is not None:
        fields.append(uint(idle_ms))  # the peer's idle-time-out: how long *it* tolerates silence
    return frame(described(OPEN, lst(*fields)))


def begin_frame(channel):
    return frame(described(BEGIN, lst(null(), uint(0), uint(2048), uint(2048))), channel=channel)


def attach_frame(channel, handle, name, address, sender=True):
    # role false = sender; a sender must give initial-delivery-count
    src = described(SOURCE, lst(string(address) if not sender else null()))
    tgt = described(TARGET, lst(string(address) if sender else null()))
    fields = [string(name), uint(handle), boolean(not sender), null(), null(), src, tgt]
    if sender:
        fields += [null(), boolean(False), uint(0)]
    return frame(described(ATTACH, lst(*fields)), channel=channel)


def flow_frame(channel, handle, credit, next_in=0, delivery_count=0):
    return frame(described(FLOW, lst(uint(next_in), uint(2048), uint(0), uint(2048), uint(handle),
                                     uint(delivery_count), uint(credit))), channel=channel)


def transfer_frame(channel, handle, delivery_id, payload, more=False, raw=False):
    """An unsettled transfer of one message whose body is one data section holding `payload`
    (raw: `payload` is sent as it is, e.g. a later part of a message split over frames; more:
    further transfer frames of this delivery follow; delivery_id None: left out, as a
    continuation frame may)."""
    if delivery_id is None:
        id_field, tag = null(), b""
    else:
        id_field, tag = uint(delivery_id), struct.pack(">I", delivery_id)
    perf = described(TRANSFER, lst(uint(handle), id_field, binary(tag), uint(0), boolean(False), boolean(more)))
    return frame(perf + (payload if raw else described(DATA_SECTION, binary(payload))), channel=channel)


def detach_frame(channel, handle, closed=True):
    return frame(described(DETACH, lst(uint(handle), boolean(closed))), channel=channel)


def end_frame(channel):
    return frame(described(END, lst()), channel=channel)


def close_frame():
    return frame(described(CLOSE, lst()))


# --------------------------------------------------------------------------
# decoding what warden sends

class Frame:
    def __init__(self, type_, channel, code, fields, payload):
        self.type, self.channel, self.code, self.fields, self.payload = type_, channel, code, fields, payload

    @property
    def name(self):
        return NAMES.get(self.code, "0x%x" % (self.code or 0))

    def field(self, i, default=None):
        return self.fields[i] if self.fields and len(self.fields) > i else default

    def condition(self):
        """(name, description) of the error of a close, end or detach, else None."""
        idx = {CLOSE: 0, END: 0, DETACH: 2}.get(self.code)
        err = self.field(idx) if idx is not None else None
        if isinstance(err, Described) and isinstance(err.value, list) and err.value:
            return str(err.value[0]), (str(err.value[1]) if len(err.value) > 1 and err.value[1] else "")
        return None

    def __repr__(self):
        return "<%s ch%d %r>" % (self.name, self.channel, self.fields)


def decode_frame_body(type_, channel, body):
    if not body:
        return Frame(type_, channel, None, None, b"")  # empty (heartbeat) frame
    d = Data()
    n = d.decode(body)
    d.rewind()
    d.next()
    obj = d.get_object()
    if not isinstance(obj, Described):
        raise ValueError("frame body is not a described type: %r" % (obj,))
    fields = obj.value if isinstance(obj.value, list) else [obj.value]
    return Frame(type_, channel, int(obj.descriptor), fields, body[n:])


class Closed(Exception):
    """The peer closed (or reset) the socket."""


class RawAmqp:
    """One TCP connection to warden's plain AMQP port, optionally from a chosen loopback address."""

    CLEAN_END = "eof"  # how `ending` names the peer closing its end of the stream

    def __init__(self, port, source="127.0.0.1", host="127.0.0.1", timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.ending = None       # once eof: how the stream ended
        self.frames = []         # every frame read, in order
        self.close_condition = None
        self.peer_header = None
        self.remote_handles = {}   # (channel, our handle) -> warden's handle

    # -- plumbing
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e))

    def _ended(self, how):
        self.eof, self.ending = True, how
        return Closed(how)

    def _recv(self):
        try:
            return self.sock.recv(65536)
        except ConnectionResetError as e:
            raise self._ended("reset (%s)" % e)

    def _fill(self, deadline):
        if self.eof:
            raise Closed(self.ending)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(remaining)
        chunk = self._recv()
        if not chunk:
            raise self._ended(self.CLEAN_END)
        self.buf += chunk

    def _take(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_header(self, timeout=5.0):
        self.peer_header = self._take(8, time.monotonic() + timeout)
        return self.peer_header

    def read_frame(self, timeout=5.0):
        """The next frame, decoded; raises Closed at EOF, socket.timeout if none came in time."""
        deadline = time.monotonic() + timeout
        head = self._take(8, deadline)
        size, doff, type_, channel = struct.unpack(">IBBH", head)
        if size < 8 or doff < 2:
            raise ValueError("bad frame header from warden: %r" % head)
        rest = self._take(size - 8, deadline)
        body = rest[doff * 4 - 8:]
        f = decode_frame_body(type_, channel, body)
        self.frames.append(f)
        if f.code == CLOSE:
            self.close_condition = f.condition()
        return f

    def expect(self, code, timeout=5.0, channel=None):
        """Reads frames until one with this descriptor (skipping flow, empty frames and the like)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f.code == code and (channel is None or f.channel == channel):
                return f
            if f.code == CLOSE:
                raise AssertionError("connection closed by warden while waiting for %s: %r"
                                     % (NAMES.get(code), f.condition()))

    def wait_closed(self, timeout):
        """Reads (and records) frames until the peer closes the socket. Returns the seconds it took,
        or None if the socket was still open after `timeout`."""
        start = time.monotonic()
        deadline = start + timeout
        try:
            while True:
                if self.buf:
                    try:
                        if len(self.buf) >= 8 and self.buf[:4] == b"AMQP":
                            self.read_header(0.5)
                            continue
                        self.read_frame(max(0.01, deadline - time.monotonic()))
                        continue
                    except (ValueError, socket.timeout):
                        self.buf = b""
                self._fill(deadline)
        except Closed:
            return time.monotonic() - start
        except socket.timeout:
            return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- protocol steps
    def sasl_mechanisms(self, timeout=5.0):
        """Sends the SASL protocol header; returns the mechanisms warden offers (list of str)."""
        self.send(SASL_HEADER)
        hdr = self.read_header(timeout)
        if hdr != SASL_HEADER:
            raise AssertionError("expected the SASL header, got %r" % hdr)
        f = self.expect(SASL_MECHANISMS, timeout)
        mechs = f.field(0)
        if mechs is None:
            return []
        if isinstance(mechs, (list, tuple)) or hasattr(mechs, "__iter__") and not isinstance(mechs, str):
            return [str(m) for m in mechs]
        return [str(mechs)]

    def sasl_plain(self, user, password, timeout=5.0):
        """The whole SASL PLAIN exchange; returns the sasl-outcome code (0 ok, 1 auth, ...)."""
        self.sasl_mechanisms(timeout)
        self.send(sasl_init_plain(user, password))
        f = self.expect(SASL_OUTCOME, timeout)
        return int(f.field(0))

    def amqp_open(self, max_frame=1 << 20, channel_max=65535, timeout=5.0, idle_ms=None):
        """After SASL: the AMQP header and open. Returns warden's open frame."""
        self.send(AMQP_HEADER + open_frame(max_frame=max_frame, channel_max=channel_max, idle_ms=idle_ms))
        hdr = self.read_header(timeout)
        if hdr != AMQP_HEADER:
            raise AssertionError("expected the AMQP header, got %r" % hdr)
        return self.expect(OPEN, timeout)

    def login(self, user, password, timeout=5.0, **open_kw):
        """SASL PLAIN and open; returns warden's open frame. AssertionError if SASL fails."""
        code = self.sasl_plain(user, password, timeout)
        if code != SASL_OK:
            raise AssertionError("SASL outcome %d for %r" % (code, user))
        return self.amqp_open(timeout=timeout, **open_kw)

    def begin(self, channel, timeout=5.0):
        self.send(begin_frame(channel))
        return self.expect(BEGIN, timeout, channel=channel)

    def attach_sender(self, channel, handle, address, timeout=5.0):
        """Attaches a sender; returns (attach frame, credit granted or 0, detach frame or None)."""
        self.send(attach_frame(channel, handle, "snd-%d-%d" % (channel, handle), address, sender=True))
        a = self.expect(ATTACH, timeout, channel=channel)
        theirs = self.remote_handles[(channel, handle)] = a.field(1)   # flow and detach name warden's handle
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f.channel != channel:
                continue
            if f.code == FLOW and f.field(4) == theirs and f.field(6):
                return a, int(f.field(6)), None
            if f.code == DETACH and f.field(0) == theirs:
                return a, 0, f
            if f.code == CLOSE:
                raise AssertionError("connection closed by warden during attach: %r" % (f.condition(),))

    def expect_detach(self, channel, handle, timeout=5.0):
        """Waits for warden to detach this link (our handle); returns the detach frame."""
        handle = self.remote_handles.get((channel, handle), handle)
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f.code == DETACH and f.channel == channel and f.field(0) == handle:
                return f
            if f.code == CLOSE:
                raise AssertionError("connection closed by warden while waiting for a detach: %r" % (f.condition(),))

    def send_message(self, channel, handle, delivery_id, payload, timeout=10.0):
        """One unsettled transfer; returns the disposition's state descriptor (ACCEPTED_STATE, ...)."""
        self.send(transfer_frame(channel, handle, delivery_id, payload))
        deadline = time.monotonic() + timeout
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if f.code == DISPOSITION and f.field(1) is not None and int(f.field(1)) <= delivery_id <= int(
                    f.field(2) if f.field(2) is not None else f.field(1)):
                st = f.field(4)
                return int(st.descriptor) if isinstance(st, Described) else None
            if f.code in (CLOSE, DETACH):
                raise AssertionError("warden sent %s instead of a disposition: %r" % (f.name, f.condition()))


def raw_login(port, user, password, source="127.0.0.1", timeout=5.0):
    """One raw SASL PLAIN attempt; returns the sasl-outcome code, or None if warden closed the
    connection before answering."""
    c = RawAmqp(port, source=source, timeout=timeout)
    try:
        return c.sasl_plain(user, password, timeout)
    except Closed:
        return None
    finally:
        c.close()


def metric_value(text, name):
    """The value of an unlabelled Prometheus sample `name` in text, or None."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            try:
                return float(line.split()[-1])
            except ValueError:
                return None
    return None
