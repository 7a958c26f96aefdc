"""Load generators and bookkeeping for test_19_crash_cycles.py (issue #5 item 4).

Each worker is a thread with its own python-proton connection (through warden_harness). Workers
run until the cycle's stop event or a hard time limit; every wait is bounded. When the gateway is
SIGKILLed under them, the connection error simply ends that worker's cycle: an exception is an
error only if it happened before the test set `killed` (the gateway closed or broke something on
its own)."""

import random
import threading
import time
import traceback
import urllib.parse

from proton import Message

from cmd_helpers import drop
from warden_harness import ACCEPTED, ANN_DEVICE, ANN_SEQUENCE, telemetry_message

HARD_LIMIT = 20.0       # seconds a worker may run in one cycle, whatever happens
TEL_WINDOW = 8          # unsettled telemetry per device
TEL_MAX = 4000          # telemetry per device per cycle (a guard; the kill comes first)
CMD_WINDOW = 8          # unsettled commands per target device
CMD_MAX = 2000          # commands per cycle (guard)
CMD_CREDIT = 50         # device credit on `commands`
READ_CREDIT = 300       # consumer credit on telemetry/check and feedback
SHORT_TTL = (0.3, 1.5)  # seconds; some commands expire, across crashes too
SHORT_TTL_SHARE = 0.1


def quiet_close(client, timeout=0.3):
    """drop(), ignoring whatever closing a dead gateway's client raises."""
    try:
        drop(client, timeout)
    except Exception:
        pass


class Control:
    """One cycle's switches: `killed` is set just before the SIGKILL, `stop` just after."""

    def __init__(self, cycle):
        self.cycle = cycle
        self.killed = threading.Event()
        self.stop = threading.Event()
        self.started = time.monotonic()

    def running(self):
        return not self.stop.is_set() and time.monotonic() - self.started < HARD_LIMIT


class Ledger:
    """Everything observed across all cycles. Appends happen under one lock (threads share it)."""

    def __init__(self):
        self.lock = threading.Lock()
        # telemetry
        self.tel_sent = set()
        self.tel_accepted = {}          # id -> cycle it was settled accepted in
        self.tel_other = []             # (id, state) settled other than accepted
        self.tel_reads = []             # (cycle, id, device annotation, sequence)
        # commands
        self.cmd_target = {}            # id -> device it was sent to
        self.cmd_accepted = {}          # id -> cycle
        self.cmd_short_ttl = set()      # ids sent with a short TTL
        self.cmd_other = []             # (id, state, condition)
        self.cmd_received = []          # (cycle, receiving device, id, delivery-count)
        self.feedback = []              # (cycle, correlation id, status, device-id)
        self.deadletters = []           # (id, x-opt-device-id), read once after the last cycle
        # registry
        self.reg_keys = {}              # device -> its key as last answered 2xx
        self.reg_revoked = {}           # device -> [keys replaced by an answered rotation]
        self.reg_ambiguous = set()      # devices whose last create/rotate went unanswered
        self.reg_ops = {"create": 0, "rotate": 0, "unanswered": 0}

    def add(self, attr, item):
        with self.lock:
            getattr(self, attr).append(item)


class Worker(threading.Thread):
    def __init__(self, name, gw, ctl, ledger, rng):
        super().__init__(name=name, daemon=True)
        self.gw, self.ctl, self.ledger, self.rng = gw, ctl, ledger, rng
        self.ready = threading.Event()
        self.error = None
        self.ended_by = None
        self.client = None
        self.stats = {}

    def run(self):
        try:
            self.body()
            self.ended_by = "stop"
        except Exception as e:  # noqa: BLE001 - classified below
            if self.ctl.killed.is_set():
                self.ended_by = "gateway killed (%s)" % type(e).__name__
            else:
                self.error = "%s before the kill: %s\n%s" % (self.name, e, traceback.format_exc())
        finally:
            self.ready.set()
            quiet_close(self.client, 0.1)

    def check_links(self, *links):
        for l in links:
            if l.h.remote_closed:
                raise RuntimeError("gateway detached %r: %s" % (l.address, l.h.condition))


class DeviceWorker(Worker):
    """One device connection: unsettled telemetry out (ids recorded when settled accepted) and
    commands in (ids recorded on receipt, each accepted at once)."""

    def __init__(self, gw, ctl, ledger, rng, dev, key, index):
        super().__init__("device-%d" % index, gw, ctl, ledger, rng)
        self.dev, self.key, self.index = dev, key, index

    def body(self):
        led, cycle = self.ledger, self.ctl.cycle
        self.client = c = self.gw.device_client(self.dev, self.key, timeout=5.0)
        s = c.sender("telemetry")
        r = c.receiver("commands", credit=CMD_CREDIT)
        pending = {}
        stats = self.stats = {"sent": 0, "accepted": 0, "commands": 0}

        def on_outcome(tag, state):
            mid = pending.pop(tag, None)
            if state == ACCEPTED:
                with led.lock:
                    led.tel_accepted.setdefault(mid, cycle)
                stats["accepted"] += 1
            else:
                led.add("tel_other", (mid, state))

        s.h.on_outcome = on_outcome
        self.ready.set()
        n = 0

        def can_send():
            return s.credit > 0 and len(pending) < TEL_WINDOW and n < TEL_MAX

        while self.ctl.running():
            while can_send():
                mid = "t%02d-%d-%06d" % (cycle, self.index, n)
                n += 1
                with led.lock:
                    led.tel_sent.add(mid)
                pending[s.send_async(telemetry_message(b"crash-cycle " + mid.encode(), msg_id=mid)).tag] = mid
            stats["sent"] = n
            for m, d in r.take():
                led.add("cmd_received", (cycle, self.dev, m.id, m.delivery_count))
                stats["commands"] += 1
                d.update(ACCEPTED)
                d.settle()
            if r.link.credit < CMD_CREDIT // 2:
                r.link.flow(CMD_CREDIT - r.link.credit)
            self.check_links(s, r)
            c.wait(lambda: r.h.incoming or can_send() or self.ctl.stop.is_set()
                   or r.h.remote_closed or s.h.remote_closed, 0.1)


class CommandSender(Worker):
    """A service enqueues unsettled commands for the devices (ids recorded when settled accepted);
    about one in ten carries a short TTL so that some expire, across crashes too."""

    def __init__(self, gw, ctl, ledger, rng, devices):
        super().__init__("commands", gw, ctl, ledger, rng)
        self.devices = devices

    def body(self):
        led, cycle, rng = self.ledger, self.ctl.cycle, self.rng
        self.client = c = self.gw.service_client("crashops", timeout=5.0)
        links = {}
        pending = {}
        stats = self.stats = {"sent": 0, "accepted": 0}
        for dev in self.devices:
            l = c.sender("devices/%s/commands" % dev)
            pending[dev] = {}

            def on_outcome(tag, state, dev=dev, l=l):
                mid = pending[dev].pop(tag, None)
                if state == ACCEPTED:
                    with led.lock:
                        led.cmd_accepted.setdefault(mid, cycle)
                    stats["accepted"] += 1
                else:
                    led.add("cmd_other", (mid, state, l.h.conditions.get(tag)))

            l.h.on_outcome = on_outcome
            links[dev] = l
        self.ready.set()
        n = 0

        def sendable():
            return [d for d in self.devices
                    if links[d].credit > 0 and len(pending[d]) < CMD_WINDOW] if n < CMD_MAX else []

        while self.ctl.running():
            for _ in range(4):  # a few at a time, so that telemetry is not starved
                devs = sendable()
                if not devs:
                    break
                dev = rng.choice(devs)
                mid = "k%02d-%06d" % (cycle, n)
                n += 1
                m = Message(body=("cmd " + mid).encode(), inferred=True)
                m.id = mid
                short = rng.random() < SHORT_TTL_SHARE
                if short:
                    m.ttl = rng.uniform(*SHORT_TTL)
                with led.lock:
                    led.cmd_target[mid] = dev
                    if short:
                        led.cmd_short_ttl.add(mid)
                pending[dev][links[dev].send_async(m).tag] = mid
            stats["sent"] = n
            self.check_links(*links.values())
            c.wait(lambda: self.ctl.stop.is_set() or any(l.h.remote_closed for l in links.values())
                   or bool(sendable()), 0.1)


class Consumer(Worker):
    """A service reads telemetry/check and feedback, accepting everything (ids recorded on receipt)."""

    def __init__(self, gw, ctl, ledger, rng, group="check"):
        super().__init__("consumer", gw, ctl, ledger, rng)
        self.group = group

    def body(self):
        self.client = c = self.gw.service_client("checker", timeout=5.0)
        tel = c.receiver("telemetry/" + self.group, credit=READ_CREDIT)
        fb = c.receiver("feedback", credit=READ_CREDIT)
        self.ready.set()
        self.stats = {"telemetry": 0, "feedback": 0}
        while self.ctl.running():
            self.poll(tel, fb)
            self.check_links(tel, fb)
            c.wait(lambda: tel.h.incoming or fb.h.incoming or self.ctl.stop.is_set()
                   or tel.h.remote_closed or fb.h.remote_closed, 0.1)

    def poll(self, tel, fb):
        led, cycle = self.ledger, self.ctl.cycle
        for m, d in tel.take():
            ann = m.annotations or {}
            led.add("tel_reads", (cycle, m.id, ann.get(ANN_DEVICE), ann.get(ANN_SEQUENCE)))
            self.stats["telemetry"] += 1
            d.update(ACCEPTED)
            d.settle()
        for m, d in fb.take():
            p = m.properties or {}
            led.add("feedback", (cycle, m.correlation_id, p.get("status"), p.get("device-id")))
            self.stats["feedback"] += 1
            d.update(ACCEPTED)
            d.settle()
        for l in (tel, fb):
            if l.link.credit < READ_CREDIT // 2:
                l.link.flow(READ_CREDIT - l.link.credit)


class RegistryWorker(Worker):
    """At random moments within the cycle's window: creates a device over REST (201 -> its key must
    work for ever after) and rotates the key of an earlier one (200 -> the new key works, the old
    one never again). A call the kill leaves unanswered makes that device ambiguous (not checked)."""

    def __init__(self, gw, ctl, ledger, rng, window):
        super().__init__("registry", gw, ctl, ledger, rng)
        self.window = window

    def body(self):
        led, rng, cycle = self.ledger, self.rng, self.ctl.cycle
        self.ready.set()
        t_create, t_rotate = sorted(rng.uniform(0.0, self.window) for _ in range(2))
        t0 = time.monotonic()
        if self.ctl.stop.wait(t_create):
            return
        dev = "reg-c%02d-%s" % (cycle, "%06x" % rng.getrandbits(24))
        self.call(dev, "PUT", "/v1/devices/" + dev, {"groups": ["crash-cycles"]}, 201, "create")
        with led.lock:
            candidates = sorted(d for d in led.reg_keys  # never the load devices (rotation closes them)
                                if d.startswith("reg-") and d not in led.reg_ambiguous and d != dev)
        if not candidates or self.ctl.stop.wait(max(0.0, t_rotate - (time.monotonic() - t0))):
            return
        self.call(rng.choice(candidates), "POST", None, None, 200, "rotate")

    def call(self, dev, method, path, body, want, op):
        led = self.ledger
        path = path or "/v1/devices/%s/keys/rotate" % urllib.parse.quote(dev, safe="")
        try:
            r = self.gw.rest(method, path, body, timeout=5.0)
        except Exception:
            if not self.ctl.killed.is_set():
                raise
            with led.lock:
                led.reg_ambiguous.add(dev)
                led.reg_ops["unanswered"] += 1
            return
        if r.status != want or not (r.json or {}).get("key"):
            raise AssertionError("%s %s: expected %d with a key, got %r" % (method, path, want, r))
        with led.lock:
            old = led.reg_keys.get(dev)
            if old is not None:
                led.reg_revoked.setdefault(dev, []).append(old)
            led.reg_keys[dev] = r.json["key"]
            led.reg_ops[op] += 1


def drain(client, links, ledger, cycle, until=None, idle=1.0, timeout=60.0):
    """Final drain on one connection: reads every receiver in `links` ({name: (Link, kind)}) with
    the given handling until `until()` (then a short idle) or until nothing came for `idle` s."""
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    done_at = None
    while time.monotonic() < deadline:
        got = False
        for name, (l, kind) in links.items():
            for m, d in l.take():
                got = True
                if kind == "telemetry":
                    ann = m.annotations or {}
                    ledger.add("tel_reads", (cycle, m.id, ann.get(ANN_DEVICE), ann.get(ANN_SEQUENCE)))
                elif kind == "feedback":
                    p = m.properties or {}
                    ledger.add("feedback", (cycle, m.correlation_id, p.get("status"), p.get("device-id")))
                elif kind.startswith("commands:"):
                    ledger.add("cmd_received", (cycle, kind.split(":", 1)[1], m.id, m.delivery_count))
                elif kind == "deadletter":
                    ledger.add("deadletters", (m.id, (m.annotations or {}).get(ANN_DEVICE)))
                d.update(ACCEPTED)
                d.settle()
            if l.link.credit < READ_CREDIT // 2:
                l.link.flow(READ_CREDIT - l.link.credit)
            if l.h.remote_closed:
                raise AssertionError("gateway detached %r during the final drain: %s" % (l.address, l.h.condition))
        now = time.monotonic()
        if got:
            last = now
        if until is not None and done_at is None and until():
            done_at = now
        if done_at is not None and now - max(done_at, last) >= min(idle, 0.5):
            break
        if now - last >= idle and (until is None or done_at is not None):
            break
        if until is not None and done_at is None and now - last >= idle * 3:
            break  # nothing more is coming; the caller reports what is missing
        client.wait(lambda: any(l.h.incoming for l, _ in links.values()), 0.1)
    client.pump()


def random_for(rng):
    return random.Random(rng.getrandbits(64))
