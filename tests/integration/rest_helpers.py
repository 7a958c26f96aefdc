"""Helpers for the REST projection tests (test_14 .. test_16): requests that run in the background
while a device is pumped in the test's thread, a raw-socket request a test can abandon, a
Server-Sent Events reader, AMQP body-section inspection, an HTTPS gateway, and a JWT issuer that
signs with the openssl CLI. Standard library only (plus python-proton through the harness)."""

import base64
import concurrent.futures
import http.client
import json
import os
import queue
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

from warden_harness import Gateway, Response, message_sections

# AMQP 1.0 section descriptors
SECTION_NAMES = {0x70: "header", 0x71: "delivery-annotations", 0x72: "message-annotations",
                 0x73: "properties", 0x74: "application-properties", 0x75: "data",
                 0x76: "amqp-sequence", 0x77: "amqp-value", 0x78: "footer"}


def dev_path(dev, suffix=""):
    return "/v1/devices/" + urllib.parse.quote(dev, safe="") + suffix


def body_sections(raw):
    """The section names of an encoded AMQP message, in order: ['header', 'properties', 'data', ...]."""
    return ["?" if code is None else SECTION_NAMES.get(int(code), "?") for code, _ in message_sections(raw)]


def iso_ms(text):
    """ISO 8601 UTC ('2026-01-02T03:04:05.678Z') to ms since the epoch; AssertionError if malformed."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z", text or "")
    if not m:
        raise AssertionError("not an ISO 8601 UTC time: %r" % (text,))
    import calendar
    secs = calendar.timegm(tuple(int(x) for x in m.groups()[:6]))
    frac = m.group(7) or "0"
    return secs * 1000 + int(frac.ljust(3, "0")[:3])


# --------------------------------------------------------------------------
# requests in the background

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rest")


def rest_async(gw, method, path, body=None, **kw):
    """gw.rest(...) on a worker thread; returns a Future of the Response."""
    return _pool.submit(gw.rest, method, path, body, **kw)


def raw_request(port, method, path, token=None, body=b"", headers=None, host="127.0.0.1"):
    """Sends one HTTP/1.1 request on a fresh socket and returns the socket without reading the answer
    (so that a test can abandon the request while the gateway holds it)."""
    s = socket.create_connection((host, port), timeout=10)
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (host, port)]
    if token:
        lines.append("Authorization: Bearer " + token)
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    lines.append("Content-Length: %d" % len(body))
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
    return s


def abort_socket(s, reset=False):
    """Closes a client socket; with reset, with an RST (SO_LINGER 0) instead of a FIN."""
    try:
        if reset:
            import struct
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


# --------------------------------------------------------------------------
# Server-Sent Events

class SseStream:
    """GET /v1/telemetry/stream on its own connection; a thread parses events into a queue.
    Each event is a dict {"event", "id", "data" (str), "json" (parsed data or None)}; comment lines
    (": keepalive") are counted in `comments` with their arrival time."""

    def __init__(self, port, token, query="", last_event_id=None, context=None, host="127.0.0.1",
                 timeout=30.0):
        if context is not None:
            self.conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/v1/telemetry/stream" + query, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.events = queue.Queue()
        self.comments = []  # [(monotonic time, text)]
        self.ended = threading.Event()
        self.error = None
        self.body = b""
        self.thread = None
        if self.status == 200:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        else:
            self.body = self.resp.read()
            self.conn.close()

    def response(self):
        """The refusal as a harness Response (for non-200 answers)."""
        return Response(self.status, self.headers, self.body)

    def _read(self):
        ev = {}
        data = []
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                line = line.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data or ev:
                        text = "\n".join(data)
                        try:
                            parsed = json.loads(text)
                        except ValueError:
                            parsed = None
                        ev["data"] = text
                        ev["json"] = parsed
                        self.events.put(ev)
                    ev, data = {}, []
                elif line.startswith(":"):
                    self.comments.append((time.monotonic(), line[1:].strip()))
                else:
                    field, _, value = line.partition(":")
                    if value.startswith(" "):
                        value = value[1:]
                    if field == "data":
                        data.append(value)
                    else:
                        ev[field] = value
        except Exception as e:  # closed by us, or by the gateway
            self.error = e
        finally:
            self.ended.set()

    def next(self, timeout=5.0):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def collect(self, pred, n, timeout=5.0):
        """Events until n satisfy pred, or timeout; returns every event read (in order)."""
        got = []
        deadline = time.monotonic() + timeout
        while sum(1 for e in got if pred(e)) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            e = self.next(left)
            if e is None:
                break
            got.append(e)
        return got

    def drain(self, seconds):
        """Every event that arrives within `seconds`."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            e = self.next(left)
            if e is not None:
                got.append(e)

    def close(self):
        try:
            self.conn.sock and self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.conn.close()
        except Exception:
            pass
        if self.thread:
            self.thread.join(5)


# --------------------------------------------------------------------------
# HTTPS

class HttpsGateway(Gateway):
    """A gateway whose REST listener is HTTPS ([http] tls_cert, tls_key). warden logs
    "listening https ..."; rest() speaks TLS to localhost, trusting `rest_ca`."""

    LISTEN_RE = re.compile(r"listening (amqps|amqp|http)s? 127\.0\.0\.1:(\d+)\b")

    def __init__(self, rest_ca, **kw):
        self.rest_ca = rest_ca
        super().__init__(**kw)

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.rest_ca)
        return ctx

    def rest_connection(self, timeout):
        # by name, for the certificate check; connected to 127.0.0.1 where warden listens
        conn = http.client.HTTPSConnection("localhost", self.http_port, timeout=timeout, context=self.ssl_context())
        raw = socket.create_connection(("127.0.0.1", self.http_port), timeout=timeout)
        conn.sock = self.ssl_context().wrap_socket(raw, server_hostname="localhost")
        return conn


# --------------------------------------------------------------------------
# JWTs signed with the openssl CLI

def b64url(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _openssl(*args, input=None):
    r = subprocess.run(["openssl"] + list(args), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args[:2]), r.stderr.decode(errors="replace")))
    return r.stdout


def _der_ecdsa_to_raw(der, size=32):
    """An ECDSA signature from DER (SEQUENCE { INTEGER r, INTEGER s }) to JWS's raw r||s."""
    assert der[0] == 0x30, der
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, der
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(size, b"\x00")
        i += 2 + n
    return out


class JwtIssuer:
    """A key pair made with openssl (kind "rsa" = RS256, "ec" = ES256 on P-256, "ec384" = a P-384
    key warden must refuse) and tokens signed with it by `openssl dgst -sha256 -sign`."""

    def __init__(self, directory, kind="rsa", name="issuer"):
        self.kind = kind
        self.key = os.path.join(directory, name + ".key.pem")
        self.pub = os.path.join(directory, name + ".pub.pem")
        if kind == "rsa":
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.key)
        elif kind == "ec":
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.key)
        elif kind == "ec384":
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", self.key)
        else:
            raise ValueError(kind)
        _openssl("pkey", "-in", self.key, "-pubout", "-out", self.pub)
        self.alg = "RS256" if kind == "rsa" else "ES256"

    def public_pem(self):
        with open(self.pub, "rb") as f:
            return f.read()

    def sign(self, signing_input):
        sig = _openssl("dgst", "-sha256", "-sign", self.key, input=signing_input.encode("ascii"))
        if self.kind != "rsa":
            sig = _der_ecdsa_to_raw(sig)
        return sig

    def token(self, claims, header=None, alg=None):
        """A compact JWS over `claims` (a dict, or raw bytes for malformed-claims tests)."""
        hdr = {"alg": alg or self.alg, "typ": "JWT"}
        hdr.update(header or {})
        payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode("utf-8")
        signing_input = b64url(json.dumps(hdr)) + "." + b64url(payload)
        return signing_input + "." + b64url(self.sign(signing_input))


def claims(iss, aud="warden", scope=None, scopes=None, ttl=300, exp=None, nbf=None, devices=None, groups=None,
           **extra):
    now = int(time.time())
    c = {"iss": iss, "aud": aud, "sub": "test-client", "iat": now}
    c["exp"] = exp if exp is not None else now + ttl
    if nbf is not None:
        c["nbf"] = nbf
    if scope is not None:
        c["scope"] = scope
    if scopes is not None:
        c["scopes"] = scopes
    if devices is not None:
        c["devices"] = devices
    if groups is not None:
        c["groups"] = groups
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


class RestAssertions:
    """Mixin for WardenTestCase subclasses."""

    def assertError(self, r, status, error=None, msg=None):
        self.assertEqual(r.status, status, msg or r)
        self.assertIsInstance(r.json, dict, "error body is not JSON: %r" % r)
        self.assertIsInstance(r.json.get("error"), str, r)
        self.assertIsInstance(r.json.get("message"), str, r)
        self.assertTrue(r.json["message"], r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        if error is not None:
            self.assertEqual(r.json["error"], error, r)
        return r.json
