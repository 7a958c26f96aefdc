"""Harness for warden's integration tests.

It starts the real `warden` binary (WARDEN_BIN, default build/dev/warden) on
127.0.0.1 with port 0, learns its ports from the "listening ..." lines on
stderr, and drives it with clients we did not write: python-qpid-proton
(Debian's python3-qpid-proton, so run these tests with /usr/bin/python3) and
rhea (node scripts in js/, run as subprocesses).

Every wait is bounded, and every process started here is killed by its pid
in cleanup (and, as a last resort, at interpreter exit).
"""

import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import resource
import queue
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

try:
    from proton import Data, Delivery, Endpoint, Message, SSLDomain, symbol
    from proton import Handler
    from proton.reactor import AtMostOnce
    from proton.utils import BlockingConnection
    from proton import ConnectionException, Timeout
except ImportError as exc:  # pragma: no cover - environment problem
    raise ImportError("python3-qpid-proton is missing: run these tests with /usr/bin/python3 (%s)" % exc)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WARDEN_BIN = os.environ.get("WARDEN_BIN", os.path.join(REPO, "build", "dev", "warden"))
PYTHON = "/usr/bin/python3"
NODE = shutil.which("node")
RHEA_DIR = os.path.join(HERE, "node_modules", "rhea")
KEEP = bool(os.environ.get("WARDEN_IT_KEEP"))  # keep temp dirs for debugging

ACCEPTED = Delivery.ACCEPTED
RELEASED = Delivery.RELEASED
REJECTED = Delivery.REJECTED
MODIFIED = Delivery.MODIFIED

ANN_DEVICE = symbol("x-opt-device-id")
ANN_ENQUEUED = symbol("x-opt-enqueued-time")
ANN_SEQUENCE = symbol("x-opt-sequence-number")

UNAUTHORIZED = "amqp:unauthorized-access"

# warden wants service secrets of at least 16 characters (the brief's "backend-secret" is 14)
BACKEND_SECRET = "backend-secret-for-tests"
NOSCOPE_SECRET = "noscope-secret-for-tests"
DEFAULT_SERVICES = {
    "backend": (BACKEND_SECRET, "telemetry:read registry:read"),
    "noscope": (NOSCOPE_SECRET, "registry:read"),
}

# --------------------------------------------------------------------------
# process bookkeeping: whatever we start, we kill (by pid)

_live_procs = set()
_live_lock = threading.Lock()


def _track(proc):
    with _live_lock:
        _live_procs.add(proc)


def _untrack(proc):
    with _live_lock:
        _live_procs.discard(proc)


def kill_proc(proc, sig=signal.SIGKILL, wait=5.0):
    """Kill one process we started, by pid, and reap it."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=wait)
    _untrack(proc)
    return proc.returncode


@atexit.register
def _kill_leftovers():
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        try:
            kill_proc(p)
        except Exception:
            pass


def wait_until(predicate, timeout, interval=0.02):
    """Polls predicate() until it is true or timeout seconds passed. Returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def new_id(prefix="dev"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


# --------------------------------------------------------------------------
# credentials

def sas_token(device_id, key_b64, hostname="localhost", ttl=3600, expiry=None, resource=None):
    """An Azure IoT Hub style SAS token for <hostname>/devices/<device_id>."""
    if expiry is None:
        expiry = int(time.time()) + ttl
    if resource is None:
        resource = "%s/devices/%s" % (hostname, device_id)
    sr = urllib.parse.quote(resource, safe="")
    to_sign = ("%s\n%d" % (sr, expiry)).encode("utf-8")
    digest = hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode("ascii"), safe="")
    return "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, sig, expiry)


def random_key():
    return base64.b64encode(os.urandom(32)).decode("ascii")


def cert_thumbprint(pem_path):
    """SHA-256 of the DER certificate: lowercase hex, no colons."""
    with open(pem_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


class TestPKI:
    """A throwaway CA, a server certificate for DNS:localhost and client certificates (openssl CLI)."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca_pem, self.ca_key = self.path("ca.pem"), self.path("ca.key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", self.ca_key, "-out", self.ca_pem, "-days", "30",
                      "-subj", "/CN=warden integration test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.server_pem, self.server_key = self.issue("server", "/CN=localhost",
                                                      "subjectAltName=DNS:localhost\n"
                                                      "extendedKeyUsage=serverAuth\n"
                                                      "basicConstraints=CA:FALSE\n")

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        r = subprocess.run(["openssl"] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed: %s" % (args[0], r.stderr.decode(errors="replace")))

    def issue(self, name, subject, ext=None, self_signed=False):
        """Returns (cert_pem, key_pem). Client certificates by default."""
        if ext is None:
            ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
        key, csr, pem, extf = (self.path(name + s) for s in (".key", ".csr", ".pem", ".ext"))
        with open(extf, "w") as f:
            f.write(ext)
        if self_signed:
            self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", key, "-out", pem, "-days", "30", "-subj", subject)
            return pem, key
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", key, "-out", csr, "-subj", subject)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca_pem, "-CAkey", self.ca_key,
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                      "-out", pem, "-days", "30", "-extfile", extf)
        return pem, key


# --------------------------------------------------------------------------
# REST

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            self.json = None

    def __repr__(self):
        return "<HTTP %d %r>" % (self.status, self.body[:400])


# --------------------------------------------------------------------------
# the gateway process

class Gateway:
    """One warden process on a temp dir. start() may be called again (same data dir) after a stop/kill."""

    LISTEN_RE = re.compile(r"listening (amqps|amqp|http) 127\.0\.0\.1:(\d+)\b")

    def __init__(self, dev_mode=True, allow_key_password=False, plain=True, tls=True,
                 tls_cert=None, tls_key=None, tls_ca=None, server_ca=None, services=None, sections=None,
                 workdir=None, nofile=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="warden-it-")
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the warden process; None = inherited
        self.data = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "warden.ini")
        self.plain, self.tls = plain, tls
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self._server_ca = server_ca
        self.services = dict(DEFAULT_SERVICES if services is None else services)
        self.proc = None
        self.starts = 0
        self.ports = {}
        self.log_path = None
        self.token = None
        cfg = {
            "gateway": {"hostname": "localhost"},
            "store": {"path": self.data, "max_size": "1073741824"},
            "amqp": {"max_message_size": "262144"},
            "http": {"listen": "127.0.0.1:0"},
            "auth": {"dev_mode": "true" if dev_mode else "false",
                     "allow_key_password": "true" if allow_key_password else "false",
                     # Suites refuse many logins on purpose from 127.0.0.1; blocking has tests of its own.
                     "failures_per_address": "1000000"},
        }
        if plain:
            cfg["amqp"]["listen"] = "127.0.0.1:0"
        if tls:
            cfg["amqp"]["tls_listen"] = "127.0.0.1:0"
        for k, v in (("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_ca", tls_ca)):
            if v:
                cfg["amqp"][k] = v
        for name, (secret, scopes) in self.services.items():
            cfg["service " + name] = {"secret": secret, "scopes": scopes}
        for sec, kv in (sections or {}).items():
            cfg.setdefault(sec, {})
            for k, v in kv.items():
                if v is None:
                    cfg[sec].pop(k, None)
                else:
                    cfg[sec][k] = v
        self.config = cfg
        self.write_config()

    # -- config
    def config_text(self):
        out = []
        for sec, kv in self.config.items():
            out.append("[%s]" % sec)
            out.extend("%s = %s" % (k, v) for k, v in kv.items())
            out.append("")
        return "\n".join(out)

    def write_config(self, text=None):
        with open(self.config_path, "w") as f:
            f.write(self.config_text() if text is None else text)

    # -- lifecycle
    def start(self, timeout=10.0):
        if not os.path.exists(WARDEN_BIN):
            raise AssertionError("warden binary not found at %s (set WARDEN_BIN)" % WARDEN_BIN)
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log_path = os.path.join(self.dir, "stderr-%d.log" % self.starts)
        out_path = os.path.join(self.dir, "stdout-%d.log" % self.starts)
        with open(self.log_path, "wb") as err, open(out_path, "wb") as out:
            limit = None
            if self.nofile:
                limit = lambda n=self.nofile: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            self.proc = subprocess.Popen([WARDEN_BIN, "serve", "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.dir,
                                         preexec_fn=limit)
        _track(self.proc)
        want = {"http"}
        if self.plain:
            want.add("amqp")
        if self.tls:
            want.add("amqps")
        self.ports = {}
        deadline = time.monotonic() + timeout
        while True:
            for kind, port in self.LISTEN_RE.findall(self.stderr()):
                self.ports[kind] = int(port)
            if want <= set(self.ports):
                break
            if self.proc.poll() is not None:
                raise AssertionError("warden exited with %s before listening; stderr:\n%s"
                                     % (self.proc.returncode, self.stderr()))
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("warden did not log listeners %s within %.0fs; stderr:\n%s"
                                     % (sorted(want - set(self.ports)), timeout, self.stderr()))
            time.sleep(0.02)
        token_path = os.path.join(self.data, "admin.token")
        if not wait_until(lambda: os.path.exists(token_path) and os.path.getsize(token_path) > 0,
                          max(0.5, deadline - time.monotonic())):
            self.kill()
            raise AssertionError("%s not written; stderr:\n%s" % (token_path, self.stderr()))
        with open(token_path) as f:
            self.token = f.read().strip()
        return self

    def stderr(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if not self.alive():
            raise AssertionError("warden is not running (exit %s); stderr:\n%s"
                                 % (self.proc and self.proc.returncode, self.stderr()[-4000:]))

    def terminate(self, timeout=10.0):
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_proc(self.proc)
            return None
        _untrack(self.proc)
        return rc

    def kill9(self):
        """kill -9 by pid and reap."""
        return kill_proc(self.proc, signal.SIGKILL)

    kill = kill9

    SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")

    def cleanup(self):
        # A graceful stop, so that LeakSanitizer runs at exit in sanitizer builds.
        if self.alive():
            self.terminate(timeout=10.0)
        if self.proc is not None:
            kill_proc(self.proc)
        log = self.stderr()
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)
        for mark in self.SANITIZER_MARKS:
            if mark in log:
                at = log.index(mark)
                raise AssertionError("sanitizer report in warden's log:\n" + log[max(0, at - 200):at + 3000])

    # -- addresses
    @property
    def amqp_url(self):
        return "amqp://127.0.0.1:%d" % self.ports["amqp"]

    @property
    def amqps_url(self):
        # by DNS name: Proton verifies DNS SANs only
        return "amqps://localhost:%d" % self.ports["amqps"]

    @property
    def http_port(self):
        return self.ports["http"]

    @property
    def server_ca(self):
        """The PEM a TLS client must trust: the configured chain's CA, or the generated dev cert."""
        if self.tls_cert:
            return self._server_ca
        return os.path.join(self.data, "tls", "dev-cert.pem")

    # -- REST
    def rest_connection(self, timeout):
        """The HTTP connection one rest() call uses."""
        return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)

    def rest(self, method, path, body=None, token="admin", headers=None, timeout=10.0):
        if token == "admin":
            token = self.token
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        conn = self.rest_connection(timeout)
        try:
            try:
                conn.request(method, path, body=data, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError):
                # warden answers some requests (413, 401, ...) from the headers
                # alone and closes without reading the body, as HTTP allows; a
                # client still sending then gets EPIPE, but the answer is there.
                pass
            r = conn.getresponse()
            payload = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, payload)
        finally:
            conn.close()

    def create_device(self, device_id=None, body=None):
        """PUT a new device; returns (id, base64 key). Asserts 201 and a 32-byte key."""
        device_id = device_id or new_id()
        r = self.rest("PUT", "/v1/devices/" + urllib.parse.quote(device_id, safe=""), body if body is not None else {})
        if r.status != 201:
            raise AssertionError("PUT /v1/devices/%s: expected 201, got %r" % (device_id, r))
        key = (r.json or {}).get("key")
        if not isinstance(key, str) or len(base64.b64decode(key)) != 32:
            raise AssertionError("PUT /v1/devices/%s: no 32-byte base64 key in %r" % (device_id, r))
        return device_id, key

    def device_op(self, device_id, op):
        """op in disable|enable|keys/rotate|delete. Returns the Response."""
        path = "/v1/devices/" + urllib.parse.quote(device_id, safe="")
        if op == "delete":
            return self.rest("DELETE", path)
        return self.rest("POST", path + "/" + op)

    def sas(self, device_id, key, **kw):
        return sas_token(device_id, key, **kw)

    # -- AMQP clients
    def client_ssl_domain(self, cert=None, key=None, ca=None):
        return client_ssl_domain(ca or self.server_ca, cert, key)

    def device_client(self, device_id, key=None, tls=False, password=None, timeout=10.0):
        if password is None:
            password = sas_token(device_id, key)
        if tls:
            return AmqpClient(self.amqps_url, device_id, password, ssl_domain=self.client_ssl_domain(),
                              timeout=timeout)
        return AmqpClient(self.amqp_url, device_id, password, timeout=timeout)

    def service_client(self, name="backend", secret=None, tls=False, timeout=10.0):
        secret = secret if secret is not None else self.services[name][0]
        if tls:
            return AmqpClient(self.amqps_url, name, secret, ssl_domain=self.client_ssl_domain(), timeout=timeout)
        return AmqpClient(self.amqp_url, name, secret, timeout=timeout)

    def conn_args(self, user, password, tls=False):
        """Connection settings for the rhea scripts."""
        if tls:
            return {"host": "localhost", "port": self.ports["amqps"], "tls": True, "ca": self.server_ca,
                    "username": user, "password": password}
        return {"host": "127.0.0.1", "port": self.ports["amqp"], "tls": False,
                "username": user, "password": password}


def client_ssl_domain(ca, cert=None, key=None):
    d = SSLDomain(SSLDomain.MODE_CLIENT)
    d.set_trusted_ca_db(ca)
    d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    if cert:
        d.set_credentials(cert, key, None)
    return d


# --------------------------------------------------------------------------
# python-proton client with explicit settlement

class LinkRefused(AssertionError):
    def __init__(self, address, condition, description):
        self.condition = condition
        self.description = description
        AssertionError.__init__(self, "attach to %r refused: %s %s" % (address, condition, description))


class _LinkHandler(Handler):
    """Collects incoming messages unsettled and outcomes of outgoing ones; records a remote detach."""

    def __init__(self):
        super().__init__()
        self.incoming = []          # [(Message, Delivery)] not yet taken
        self.outcomes = {}          # delivery tag -> remote state, for our sends
        self.conditions = {}        # delivery tag -> (name, description) of a remote error condition
        self.remote_closed = False
        self.condition = None
        self.on_outcome = None      # optional callback(tag, state)
        self.on_raw = None          # optional callback(Message, encoded bytes) for received messages

    def on_delivery(self, event):
        dlv = event.delivery
        link = dlv.link
        if link.is_receiver:
            if dlv.readable and not dlv.partial:
                m = Message()
                raw = link.recv(dlv.pending)
                m.decode(raw)
                link.advance()
                if self.on_raw:
                    self.on_raw(m, raw)
                self.incoming.append((m, dlv))
        else:
            if dlv.updated and dlv.remote_state:
                state = dlv.remote_state
                c = dlv.remote.condition
                if c is not None:
                    self.conditions[dlv.tag] = (c.name, c.description)
                self.outcomes[dlv.tag] = state
                if self.on_outcome:
                    self.on_outcome(dlv.tag, state)
                dlv.settle()

    def on_link_remote_close(self, event):
        self.remote_closed = True
        c = event.link.remote_condition
        if c is not None:
            self.condition = (c.name, c.description)
        if event.link.state & Endpoint.LOCAL_ACTIVE:
            event.link.close()


class Link:
    def __init__(self, client, link, handler, address):
        self.client, self.link, self.h, self.address = client, link, handler, address

    @property
    def credit(self):
        return self.link.credit

    @property
    def closed_by_peer(self):
        return self.h.remote_closed

    @property
    def condition(self):
        return self.h.condition

    # receiving
    def flow(self, n):
        self.link.flow(n)
        self.client.pump()

    def wait_messages(self, n, timeout=5.0):
        """Waits until n messages are buffered (not taken). Returns how many are."""
        self.client.wait(lambda: len(self.h.incoming) >= n or self.h.remote_closed, timeout)
        return len(self.h.incoming)

    def take(self):
        """All buffered messages as [(Message, Delivery)], unsettled."""
        out, self.h.incoming = self.h.incoming, []
        return out

    def settle(self, dlv, state=ACCEPTED, pump=True):
        dlv.update(state)
        dlv.settle()
        if pump:
            self.client.pump()

    def receive(self, n, timeout=5.0, state=ACCEPTED, credit=True):
        """Grants credit for n (if credit), waits for up to n messages, settles them with `state`.
        Returns the list of Messages (possibly shorter than n on timeout)."""
        if credit and self.link.credit < n:
            self.flow(n - self.link.credit)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline and not self.h.remote_closed:
            self.wait_messages(1, max(0.0, deadline - time.monotonic()))
            for m, d in self.take():
                got.append(m)
                if state is not None:
                    self.settle(d, state, pump=False)
        self.client.pump()
        return got

    def drain_until_idle(self, idle=1.0, timeout=20.0, state=ACCEPTED, window=200, on_message=None, stop=None):
        """Receives (settling each with `state`) until no message came for `idle` seconds, stop()
        is true, or timeout. Returns the Messages."""
        got = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and not self.h.remote_closed:
            if self.link.credit < window // 2:
                self.link.flow(window - self.link.credit)
            self.client.wait(lambda: self.h.incoming or self.h.remote_closed,
                             min(idle, max(0.0, deadline - time.monotonic())))
            batch = self.take()
            for m, d in batch:
                got.append(m)
                if on_message:
                    on_message(m)
                if state is not None:
                    d.update(state)
                    d.settle()
            if batch:
                last = time.monotonic()
            if stop and stop():
                break
            if not batch and time.monotonic() - last >= idle:
                break
        self.client.pump()
        return got

    # sending
    def send_async(self, msg):
        dlv = self.link.send(msg)
        return dlv

    def send(self, msg, timeout=10.0):
        """Sends one message; waits for its outcome (unsettled link) and returns the remote state
        (Delivery.ACCEPTED, ...), or None when the link is pre-settled."""
        if self.link.credit <= 0:
            self.client.wait(lambda: self.link.credit > 0 or self.h.remote_closed, timeout)
            if self.h.remote_closed:
                raise LinkRefused(self.address, *(self.h.condition or (None, None)))
            if self.link.credit <= 0:
                raise AssertionError("no credit on %r within %.1fs" % (self.address, timeout))
        dlv = self.link.send(msg)
        if self.link.snd_settle_mode == self.link.SND_SETTLED:
            dlv.settle()
            self.client.pump()
            return None
        tag = dlv.tag
        self.client.wait(lambda: tag in self.h.outcomes or self.h.remote_closed, timeout)
        if tag not in self.h.outcomes:
            raise AssertionError("no outcome for message on %r within %.1fs (link closed: %s %s)"
                                 % (self.address, timeout, self.h.remote_closed, self.h.condition))
        return self.h.outcomes[tag]

    def send_outcome(self, msg, timeout=10.0):
        """Sends one message on an unsettled link; returns (remote state, error condition name or None)."""
        if self.link.credit <= 0:
            self.client.wait(lambda: self.link.credit > 0 or self.h.remote_closed, timeout)
            if self.h.remote_closed:
                raise LinkRefused(self.address, *(self.h.condition or (None, None)))
            if self.link.credit <= 0:
                raise AssertionError("no credit on %r within %.1fs" % (self.address, timeout))
        tag = self.link.send(msg).tag
        self.client.wait(lambda: tag in self.h.outcomes or self.h.remote_closed, timeout)
        if tag not in self.h.outcomes:
            raise AssertionError("no outcome for message on %r within %.1fs (link closed: %s %s)"
                                 % (self.address, timeout, self.h.remote_closed, self.h.condition))
        cond = self.h.conditions.get(tag)
        return self.h.outcomes[tag], (cond[0] if cond else None)

    def close(self, timeout=5.0):
        if self.link.state & Endpoint.LOCAL_ACTIVE:
            self.link.close()
        try:
            self.client.wait(lambda: self.link.state & Endpoint.REMOTE_CLOSED, timeout)
        except ConnectionException:
            pass


class AmqpClient:
    """A python-proton connection (BlockingConnection as the event pump) with explicit links."""

    def __init__(self, url, user=None, password=None, ssl_domain=None, mechs="PLAIN", timeout=10.0):
        kw = dict(allowed_mechs=mechs, allow_insecure_mechs=True, sasl_enabled=True)
        if user is not None:
            kw["user"] = user
        if password is not None:
            kw["password"] = password
        self.url = url
        self.timeout = timeout
        self.bc = BlockingConnection(url, timeout=timeout, ssl_domain=ssl_domain, **kw)
        self.closed = False

    @property
    def conn(self):
        return self.bc.conn

    def remote_condition(self):
        c = self.bc.conn.remote_condition if self.bc.conn else None
        return (c.name, c.description) if c else None

    def wait(self, predicate, timeout):
        """Processes events until predicate() or timeout. Raises ConnectionException if the connection is lost."""
        c = self.bc.container
        deadline = time.monotonic() + timeout
        old = c.timeout
        try:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                c.timeout = min(remaining, 0.2)
                c.process()
                if self.bc.disconnected:
                    raise ConnectionException("connection %s lost: %s" % (self.url, self.bc.disconnected))
            return True
        finally:
            c.timeout = old

    def pump(self, duration=0.0):
        """Flushes pending work (deliveries, settlements, flow) to the wire: processes events until
        the transport has no output left (bounded to 2 s), and for at least `duration` seconds."""
        c = self.bc.container
        old = c.timeout
        end = time.monotonic() + duration
        limit = time.monotonic() + max(duration, 2.0)
        try:
            c.timeout = 0.01
            while True:
                c.process()
                if self.bc.disconnected:
                    raise ConnectionException("connection %s lost: %s" % (self.url, self.bc.disconnected))
                now = time.monotonic()
                if now >= limit or (now >= end and self._output_pending() <= 0):
                    break
        finally:
            c.timeout = old

    def _output_pending(self):
        t = self.bc.conn.transport if self.bc.conn else None
        if t is None:
            return 0
        try:
            return t.pending()
        except Exception:
            return 0

    def _attach(self, address, sender, presettled=False, name=None, timeout=5.0):
        h = _LinkHandler()
        name = name or "%s-%s" % ("snd" if sender else "rcv", uuid.uuid4().hex)  # unique per connection
        if sender:
            link = self.bc.container.create_sender(self.bc.conn, address, name=name, handler=h,
                                                   options=AtMostOnce() if presettled else None)
        else:
            link = self.bc.container.create_receiver(self.bc.conn, address, name=name, handler=h)
        self.wait(lambda: not (link.state & Endpoint.REMOTE_UNINIT) or h.remote_closed, timeout)
        return Link(self, link, h, address)

    def sender(self, address, presettled=False, name=None, timeout=5.0):
        """Attaches a sender; raises LinkRefused if the peer detaches it (checked briefly)."""
        l = self._attach(address, True, presettled, name, timeout)
        self._check_refused(l)
        return l

    def receiver(self, address, credit=0, name=None, timeout=5.0):
        """Attaches a receiver (no credit unless given); raises LinkRefused if the peer detaches it."""
        l = self._attach(address, False, name=name, timeout=timeout)
        self._check_refused(l)
        if credit:
            l.flow(credit)
        return l

    def _check_refused(self, l):
        if l.link.state & Endpoint.REMOTE_UNINIT:
            raise AssertionError("no attach answer for %r" % l.address)
        # A refusal is an attach (often with a null terminus) followed by a detach; give the
        # detach a moment to arrive when the terminus is null.
        term = l.link.remote_target if l.link.is_sender else l.link.remote_source
        if term is None or term.address is None:
            self.wait(lambda: l.h.remote_closed, 1.0)
        else:
            self.pump(0.05)
        if l.h.remote_closed:
            raise LinkRefused(l.address, *(l.h.condition or (None, None)))

    def attach_refusal(self, address, sender=True, timeout=5.0):
        """Attaches and waits up to timeout for the peer to detach. Returns the detach condition
        name ('' if detached without one) or None if the link stayed attached."""
        l = self._attach(address, sender, timeout=timeout)
        if not sender:
            l.link.flow(1)
        self.wait(lambda: l.h.remote_closed, timeout)
        if not l.h.remote_closed:
            l.close()
            return None
        return l.h.condition[0] if l.h.condition else ""

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.bc.close()
        except Exception:
            pass


def connect_error(fn):
    """Runs fn() expecting the connection to be refused. Returns the error text (None if it connected)."""
    try:
        c = fn()
    except (ConnectionException, Timeout) as e:
        return str(e)
    except Exception as e:  # SSL failures etc.
        return "%s: %s" % (type(e).__name__, e)
    else:
        c.close()
        return None


def message_sections(raw):
    """Walks the sections of an encoded AMQP message. Yields (descriptor, d) for each: d is a proton Data
    positioned on the section's descriptor inside it (the caller may move on to its value), descriptor
    is None for a section that is not a described value."""
    d = Data()
    off = 0
    while off < len(raw):
        d.clear()
        n = d.decode(raw[off:])
        if n <= 0:
            return
        off += n
        d.rewind()
        d.next()
        if d.type() != Data.DESCRIBED:
            yield None, d
            continue
        d.enter()
        d.next()
        yield d.get_object(), d
        d.exit()


def telemetry_message(body=b"", msg_id=None, inferred=True, **kw):
    m = Message(body=body, inferred=inferred, **kw)
    if msg_id is not None:
        m.id = msg_id
    return m


# --------------------------------------------------------------------------
# long-lived device connection in another process (to time revocation)

class Holder:
    """clients/hold_connection.py in a subprocess: connects, sends one telemetry message, reports
    'ready', then reports the moment (time.monotonic) the gateway closes the connection."""

    def __init__(self, url, user, password, ca=None, max_seconds=30):
        args = [PYTHON, os.path.join(HERE, "clients", "hold_connection.py"),
                "--url", url, "--user", user, "--password", password, "--max-seconds", str(max_seconds)]
        if ca:
            args += ["--ca", ca]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        _track(self.proc)
        self.events = queue.Queue()
        self.stderr_lines = []
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line.decode("utf-8")))
            except ValueError:
                pass
        self.events.put({"event": "eof"})

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", errors="replace"))

    def next_event(self, timeout):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_ready(self, timeout=10.0):
        ev = self.next_event(timeout)
        if not ev or ev.get("event") != "ready":
            raise AssertionError("holder not ready: %r; stderr: %s" % (ev, "".join(self.stderr_lines)[-2000:]))
        return ev

    def stop(self):
        kill_proc(self.proc)
        for t in self.threads:
            t.join(2.0)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


# --------------------------------------------------------------------------
# rhea (node) runner

def rhea_available():
    return NODE is not None and os.path.isdir(RHEA_DIR)


def run_rhea(script, args, timeout=30.0):
    """Runs js/<script> with one JSON argument; returns the JSON object it prints last."""
    proc = subprocess.Popen([NODE, os.path.join(HERE, "js", script), json.dumps(args)], cwd=HERE,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _track(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_proc(proc)
        raise AssertionError("rhea script %s did not finish within %.0fs" % (script, timeout))
    _untrack(proc)
    lines = [l for l in out.decode("utf-8", errors="replace").splitlines() if l.strip().startswith("{")]
    if not lines:
        raise AssertionError("rhea script %s printed no JSON (rc %s); stderr:\n%s"
                             % (script, proc.returncode, err.decode(errors="replace")))
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# test base

class WardenTestCase(unittest.TestCase):
    """Helpers; gateways and clients started through it are cleaned up by pid."""

    def start_gateway(self, **kw):
        gw = Gateway(**kw)
        self.addCleanup(gw.cleanup)
        gw.start()
        return gw

    @classmethod
    def start_class_gateway(cls, **kw):
        gw = Gateway(**kw)
        cls.addClassCleanup(gw.cleanup)
        gw.start()
        return gw

    def track(self, client):
        self.addCleanup(client.close)
        return client

    def device_client(self, gw, device_id, key=None, **kw):
        return self.track(gw.device_client(device_id, key, **kw))

    def service_client(self, gw, name="backend", **kw):
        return self.track(gw.service_client(name, **kw))

    def assertRefused(self, fn, msg=None, condition=UNAUTHORIZED):
        err = connect_error(fn)
        self.assertIsNotNone(err, msg or "connection was accepted but should have been refused")
        if condition:
            self.assertIn(condition, err, (msg or "refused, but not with %s" % condition))
        return err

    def assertAttachRefused(self, client, address, sender=True, condition=UNAUTHORIZED):
        got = client.attach_refusal(address, sender=sender)
        role = "sender" if sender else "receiver"
        self.assertIsNotNone(got, "%s on %r stayed attached; it should be refused" % (role, address))
        if condition:
            self.assertEqual(got, condition, "%s on %r detached with %r, expected %r" % (role, address, got, condition))

    def send_telemetry(self, client, messages, address="telemetry"):
        """Sends each message unsettled; asserts every one is accepted."""
        s = client.sender(address)
        for m in messages:
            state = s.send(m)
            self.assertEqual(state, ACCEPTED, "telemetry not accepted: remote state %s" % state)
        return s

    def read_group(self, gw, group, want_ids=(), device=None, timeout=10.0, idle=None, client=None):
        """Reads telemetry/<group> (accepting) until every id in want_ids was seen (or, with no
        want_ids, until idle), or timeout. Returns, in arrival order, the messages whose id is in
        want_ids or whose x-opt-device-id is `device` (everything if neither is given)."""
        c = client or self.service_client(gw)
        address = "telemetry" if group in (None, "$default") else "telemetry/" + group
        r = c.receiver(address)
        want = set(want_ids)
        found = []
        ids = set()

        def on_message(m):
            if (device is None and not want) or m.id in want or (
                    device is not None and (m.annotations or {}).get(ANN_DEVICE) == device):
                found.append(m)
                ids.add(m.id)

        stop = (lambda: want <= ids) if want else None
        if idle is None:
            idle = timeout if want else 1.0
        r.drain_until_idle(idle=idle, timeout=timeout, on_message=on_message, stop=stop)
        r.close()
        return found
