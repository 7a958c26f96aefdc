"""Shared helpers for the command, notification, feedback and response tests (test_09 .. test_12).

Every test gets its own gateway (one starts in well under a second), so the shared `feedback`,
`deadletter`, `responses` and `inquiries` logs hold only that test's records and one reader per
log sees them all."""

import time
import uuid

from proton import Data, Delivery, Message, symbol

from warden_harness import ACCEPTED, DEFAULT_SERVICES, REJECTED, WardenTestCase, message_sections, new_id

OPS_SECRET = "ops-secret-for-command-tests"
CMDONLY_SECRET = "cmdonly-secret-for-tests"
NOTIFONLY_SECRET = "notifonly-secret-for-tests"
SERVICES = dict(DEFAULT_SERVICES)
SERVICES.update({
    # everything issue #3 offers a backend
    "ops": (OPS_SECRET, "commands:send notifications:send feedback:read inquiries:read registry:read"),
    "cmdonly": (CMDONLY_SECRET, "commands:send"),
    "notifonly": (NOTIFONLY_SECRET, "notifications:send"),
})

ANN_FROM = symbol("x-opt-from-device")
ANN_DL_REASON = symbol("x-opt-deadletter-reason")
ANN_DL_TIME = symbol("x-opt-deadletter-time")

NOT_FOUND = "amqp:not-found"
UNAUTHORIZED = "amqp:unauthorized-access"
PRECONDITION = "amqp:precondition-failed"
LIMIT = "amqp:resource-limit-exceeded"
SIZE = "amqp:link:message-size-exceeded"
INVALID = "amqp:invalid-field"


def command(mid=None, body=b"cmd", **kw):
    """A command message: data-section body, message-id mid (any AMQP id type; None leaves it absent)."""
    m = Message(body=body, inferred=isinstance(body, bytes), **kw)
    if mid is not None:
        m.id = mid
    return m


def modified(failed=False, undeliverable=False):
    """The modified outcome with its delivery-failed / undeliverable-here flags, for settle()."""
    return ("modified", failed, undeliverable)


def settle(link, dlv, outcome):
    """Settles a received delivery with ACCEPTED/REJECTED/RELEASED or modified(...)."""
    if isinstance(outcome, tuple) and outcome[0] == "modified":
        dlv.local.failed = outcome[1]
        dlv.local.undeliverable = outcome[2]
        dlv.update(Delivery.MODIFIED)
        dlv.settle()
        link.client.pump()
    else:
        link.settle(dlv, outcome)


class LogReader:
    """One service receiver on a log address (feedback, deadletter, responses[/N], inquiries) that
    accepts everything and keeps (Message, wall-clock receipt time) in arrival order."""

    def __init__(self, client, address, credit=500):
        self.client = client
        self.address = address
        self.link = client.receiver(address, credit=credit)
        self.credit = credit
        self.got = []  # [(Message, time.time())]
        self.raw = {}  # id(Message) -> its encoded bytes
        self.link.h.on_raw = lambda m, raw: self.raw.__setitem__(id(m), raw)

    def poll(self, timeout=0.0):
        """Processes events for up to timeout seconds (returns early once something arrived)."""
        h = self.link.h
        self.client.wait(lambda: h.incoming or h.remote_closed, timeout)
        now = time.time()
        for m, d in self.link.take():
            self.got.append((m, now))
            d.update(ACCEPTED)
            d.settle()
        if self.link.link.credit < self.credit // 2:
            self.link.link.flow(self.credit - self.link.link.credit)
        self.client.pump()

    def wait_for(self, pred, n=1, timeout=5.0):
        """Waits until n received messages satisfy pred(m). Returns [(m, t)] of all that do."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [(m, t) for m, t in self.got if pred(m)]
            if len(hits) >= n or time.monotonic() >= deadline:
                return hits
            self.poll(min(0.2, max(0.0, deadline - time.monotonic())))

    def settle_for(self, duration):
        """Keeps receiving for `duration` seconds (to see that nothing more arrives)."""
        end = time.monotonic() + duration
        while time.monotonic() < end:
            self.poll(min(0.2, max(0.0, end - time.monotonic())))

    def messages(self, pred=lambda m: True):
        return [m for m, _ in self.got if pred(m)]


def id_types(raw):
    """The AMQP type names ('string', 'ulong', 'uuid', 'binary', ...) of message-id and correlation-id
    in an encoded message, read from its properties section (python-proton's Message turns a
    ulong id into a plain int)."""
    out = {"message-id": None, "correlation-id": None}
    for code, d in message_sections(raw):
        if code == 0x73:  # properties
            d.next()
            d.enter()
            types = []
            for _ in range(6):
                if not d.next():
                    break
                types.append(Data.type_name(d.type()))
            d.exit()
            if types:
                out["message-id"] = types[0]
            if len(types) > 5:
                out["correlation-id"] = types[5]
    return out


def fb_status(m):
    return (m.properties or {}).get("status")


def fb_device(m):
    return (m.properties or {}).get("device-id")


class CommandsTestCase(WardenTestCase):
    """A fresh gateway per test with the ops/cmdonly/notifonly services; helpers for the flows."""

    GATEWAY_SECTIONS = None

    def setUp(self):
        self.gw = self.start_gateway(services=SERVICES, sections=self.GATEWAY_SECTIONS)
        self._ops = None

    def tearDown(self):
        self.gw.assert_alive()

    def track(self, client):
        # a client may outlive its gateway (kill -9 tests): close it without the long wait
        self.addCleanup(drop, client, 1.0)
        return client

    # -- principals
    def device(self, body=None, device_id=None):
        return self.gw.create_device(device_id or new_id("dev"), body)

    def connect(self, dev, key):
        return self.device_client(self.gw, dev, key)

    def ops(self):
        """The test's main service connection (commands, notifications, feedback, inquiries)."""
        if self._ops is None:
            self._ops = self.service_client(self.gw, "ops")
        return self._ops

    def service(self, name="ops"):
        return self.service_client(self.gw, name)

    def reader(self, address, client=None):
        return LogReader(client or self.service(), address)

    # -- enqueueing
    def enqueue(self, address, msgs, client=None):
        """Sends each message unsettled on a sender to `address`; returns [(state, condition)]."""
        s = (client or self.ops()).sender(address)
        return [s.send_outcome(m) for m in msgs]

    def enqueue_ok(self, device_id, mids, client=None, kind="commands", **kw):
        """Enqueues one command (or notification) per id for device_id; asserts each is accepted."""
        out = self.enqueue("devices/%s/%s" % (device_id, kind),
                           [command(mid, body=("body-%s" % mid).encode(), **kw) for mid in mids], client)
        for mid, (state, cond) in zip(mids, out):
            self.assertEqual(state, ACCEPTED, "enqueue of %r for %s: %s %s" % (mid, device_id, state, cond))
        return mids

    def assertEnqueueRejected(self, outcome, condition, what):
        state, cond = outcome
        self.assertEqual(state, REJECTED, "%s: expected rejected %s, got state %s (%s)" % (what, condition, state, cond))
        self.assertEqual(cond, condition, "%s: rejected with %r, expected %r" % (what, cond, condition))

    # -- device side
    def egress(self, client, address="commands", credit=0):
        return client.receiver(address, credit=credit)

    def take(self, link, n, timeout=5.0):
        """Grants credit up to n, waits for n deliveries; returns [(Message, Delivery)] unsettled."""
        if link.credit < n:
            link.flow(n - link.credit)
        link.wait_messages(n, timeout)
        return link.take()

    def expect_nothing(self, link, seconds=0.5, credit=10):
        if link.credit < credit:
            link.flow(credit - link.credit)
        n = link.wait_messages(1, seconds)
        self.assertEqual(n, 0, "unexpected deliveries: %r" % [(m.id, m.delivery_count) for m, _ in link.take()])

    def queue_depth(self, device_id):
        r = self.gw.rest("GET", "/v1/devices/" + device_id)
        self.assertEqual(r.status, 200, r)
        return r.json["queueDepth"]


def uid():
    return str(uuid.uuid4())


def drop(client, timeout=0.3):
    """Closes a client whose gateway was killed, without BlockingConnection's full close wait."""
    if client is None or client.closed:
        return
    try:
        client.bc.timeout = timeout
    except Exception:
        pass
    client.close()
