"""Commands and restarts (CONTRACT.md "Durability"; issue #3): what was settled `accepted` survives
kill -9; deliveries a device held unsettled when warden stopped are redelivered with delivery-count
raised; and, under load, no command accepted from a service is lost across kill -9 (each is either
received by the device or reported in feedback; duplicates allowed). WARDEN_IT_SEED replays a run."""

import os
import random
import signal
import threading
import time
import unittest

from proton import ConnectionException

from cmd_helpers import CommandsTestCase, LogReader, command, drop, fb_status, modified, settle
from warden_harness import ACCEPTED, REJECTED

CYCLES = 3
IN_FLIGHT = 32


class RestartMidDeliveryTest(CommandsTestCase):

    def held_across(self, stop):
        """The device takes 3 of 4 commands (one accepted and completed, two held unsettled, one
        not yet delivered); warden is stopped with `stop` and restarted; the device reconnects."""
        dev, key = self.device()
        ops = self.gw.service_client("ops")
        c = self.gw.device_client(dev, key)
        try:
            self.enqueue_ok(dev, ["done", "held-1", "held-2", "queued"], client=ops)
            r = self.egress(c)
            got = self.take(r, 3)
            self.assertEqual([(m.id, m.delivery_count) for m, _ in got], [("done", 0), ("held-1", 0), ("held-2", 0)])
            r.settle(got[0][1], ACCEPTED)
            fb = LogReader(ops, "feedback")
            self.assertEqual([fb_status(m) for m, _ in fb.wait_for(lambda m: m.correlation_id == "done", 1, 5)],
                             ["completed"], "the accepted command did not complete before the stop")
            stop()
        finally:
            drop(c)
            drop(ops)
        self.gw.start()
        c2 = self.connect(dev, key)
        r2 = self.egress(c2)
        got = self.take(r2, 3)
        self.assertEqual([(m.id, m.delivery_count) for m, _ in got],
                         [("held-1", 1), ("held-2", 1), ("queued", 0)],
                         "after the restart: held deliveries come again with delivery-count raised by one, "
                         "the undelivered one with 0, the completed one not at all")
        self.assertEqual(got[0][0].body, b"body-held-1")
        for m, d in got:
            r2.settle(d, ACCEPTED)
        self.expect_nothing(r2, 0.5)
        fb = self.reader("feedback")
        fb.wait_for(lambda m: m.correlation_id in ("held-1", "held-2", "queued"), 3, 5)
        fb.settle_for(0.3)
        statuses = sorted((m.correlation_id, fb_status(m)) for m, _ in fb.got)
        # "done" may be read again (at-least-once reading of the feedback log), but never with another status
        statuses = [s for s in statuses if s != ("done", "completed")]
        self.assertEqual(statuses, [("held-1", "completed"), ("held-2", "completed"), ("queued", "completed")])
        self.assertEqual(self.queue_depth(dev), 0)

    def test_sigterm_with_unsettled_deliveries(self):
        self.held_across(lambda: self.assertEqual(self.gw.terminate(), 0, "SIGTERM did not exit 0"))

    def test_kill9_with_unsettled_deliveries(self):
        self.held_across(self.gw.kill9)

    def test_accepted_commands_and_feedback_survive_kill9(self):
        dev, key = self.device()
        ops = self.gw.service_client("ops")
        c = self.gw.device_client(dev, key)
        try:
            self.enqueue_ok(dev, ["k%d" % i for i in range(5)], client=ops)
            self.enqueue_ok(dev, ["kn"], client=ops, kind="notifications")
            r = self.egress(c)
            got = self.take(r, 2)
            r.settle(got[0][1], REJECTED)
            r.settle(got[1][1], ACCEPTED)
            LogReader(ops, "deadletter")  # opened, nothing read
            # wait for both outcomes to commit (the device's settle is answered after the commit)
            time.sleep(0.3)
        finally:
            self.gw.kill9()
            drop(c)
            drop(ops)
        self.gw.start()
        self.assertEqual(self.queue_depth(dev), 4)
        fb = self.reader("feedback")
        hits = fb.wait_for(lambda m: True, 2, 5)
        self.assertEqual(sorted((m.correlation_id, fb_status(m)) for m, _ in hits),
                         [("k0", "rejected"), ("k1", "completed")], "feedback lost across kill -9")
        r = self.egress(self.connect(dev, key))
        got = r.receive(4, timeout=5)
        self.assertEqual([(m.id, m.delivery_count) for m in got], [("k2", 0), ("k3", 0), ("k4", 0), ("kn", 0)])


class MaxDeliveryCountConfigTest(CommandsTestCase):
    GATEWAY_SECTIONS = {"commands": {"max_delivery_count": "3"}}

    def test_lost_connections_count_toward_max_delivery_count(self):
        dev, key = self.device()
        self.enqueue_ok(dev, ["flaky"])
        counts = []
        for _ in range(2):  # delivered, connection lost unsettled
            c = self.gw.device_client(dev, key)
            got = self.take(self.egress(c), 1)
            counts.append(got[0][0].delivery_count)
            c.close()
        c = self.connect(dev, key)
        r = self.egress(c)
        got = self.take(r, 1)
        counts.append(got[0][0].delivery_count)
        settle(r, got[0][1], modified(failed=True))  # the third failure: max_delivery_count 3 reached
        self.assertEqual(counts, [0, 1, 2])
        self.expect_nothing(r, 0.5)
        fb = self.reader("feedback")
        self.assertEqual([fb_status(m) for m, _ in fb.wait_for(lambda m: True, 1, 5)], ["delivery-count-exceeded"])
        dl = self.reader("deadletter")
        self.assertEqual([m.id for m, _ in dl.wait_for(lambda m: True, 1, 5)], ["flaky"])

    def test_restarts_count_toward_max_delivery_count(self):
        dev, key = self.device()
        self.enqueue_ok(dev, ["crashy"])
        counts = []
        for _ in range(3):  # delivered, then warden killed with it unsettled
            c = self.gw.device_client(dev, key)
            try:
                got = self.take(self.egress(c), 1)
                self.assertEqual(len(got), 1, "no delivery after %d restarts" % len(counts))
                counts.append(got[0][0].delivery_count)
                # Killed at once: warden marks a delivery durably before the device can see it,
                # so even this kill must count as a failed delivery.
            finally:
                self.gw.kill9()
                drop(c)
            self.gw.start()
        self.assertEqual(counts, [0, 1, 2])
        r = self.egress(self.connect(dev, key))
        self.expect_nothing(r, 0.5)
        fb = self.reader("feedback")
        self.assertEqual([fb_status(m) for m, _ in fb.wait_for(lambda m: True, 1, 5)], ["delivery-count-exceeded"])


class CommandsInFlightKill9Test(CommandsTestCase):
    """A service enqueues commands unsettled (recording each id settled `accepted`) while the device
    takes and accepts them; warden is SIGKILLed at a random moment, restarted, and the device drains
    its queue. Every accepted id must have reached the device or the feedback log."""

    def setUp(self):
        super().setUp()
        seed = int(os.environ.get("WARDEN_IT_SEED", str(int(time.time() * 1000) % 1000000)))
        print("command crash test seed %d (WARDEN_IT_SEED to replay)" % seed)
        self.rng = random.Random(seed)

    def device_loop(self, dev, key, received, stop, errors, ready, rng):
        """In its own thread (own connection): receive and accept until the connection dies."""
        c = None
        try:
            c = self.gw.device_client(dev, key)
            r = c.receiver("commands", credit=50)
            ready.set()
            while not stop.is_set():
                c.wait(lambda: r.h.incoming or r.h.remote_closed or stop.is_set(), 0.2)
                for m, d in r.take():
                    received.append(m.id)
                    if rng.random() < 0.8:  # most at once, some after a beat
                        d.update(ACCEPTED)
                        d.settle()
                    else:
                        c.pump(0.005)
                        d.update(ACCEPTED)
                        d.settle()
                if r.link.credit < 25:
                    r.link.flow(50 - r.link.credit)
                c.pump()
        except ConnectionException:
            pass
        except Exception as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)
        finally:
            ready.set()
            drop(c)

    def enqueue_until_killed(self, dev, key, cycle):
        ops = self.gw.service_client("ops")
        s = ops.sender("devices/%s/commands" % dev)
        pending, accepted, other = {}, set(), []

        def on_outcome(tag, state):
            mid = pending.pop(tag, None)
            if state == ACCEPTED:
                accepted.add(mid)
            else:
                other.append((mid, state, s.h.conditions.get(tag)))

        s.h.on_outcome = on_outcome
        received, errors, stop, ready = [], [], threading.Event(), threading.Event()
        dt = threading.Thread(target=self.device_loop, args=(dev, key, received, stop, errors, ready,
                                                                 random.Random(self.rng.random())), daemon=True)
        dt.start()
        ready.wait(10)
        pid = self.gw.proc.pid
        timer = None
        n = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15.0:
                while s.credit > 0 and len(pending) < IN_FLIGHT:
                    mid = "c%d-%06d" % (cycle, n)
                    n += 1
                    pending[s.send_async(command(mid, body=mid.encode())).tag] = mid
                if timer is None and len(accepted) >= 20:
                    timer = threading.Timer(self.rng.uniform(0.05, 0.6), os.kill, (pid, signal.SIGKILL))
                    timer.start()
                ops.wait(lambda: s.credit > 0 and len(pending) < IN_FLIGHT, 1.0)
        except ConnectionException:
            pass
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
            self.gw.kill9()
            stop.set()
            dt.join(10)
            drop(ops)
        self.assertFalse(errors, "device thread failed: %r" % errors)
        self.assertFalse(other, "commands refused while the device kept up: %r" % other[:5])
        print("cycle %d: sent %d, accepted %d, device received %d, %d unsettled at the kill"
              % (cycle, n, len(accepted), len(received), len(pending)))
        return accepted, received, n

    def test_no_accepted_command_lost_across_kill9(self):
        dev, key = self.device({"queueLimit": 100000})
        all_sent = set()
        for cycle in range(CYCLES):
            accepted, received, sent = self.enqueue_until_killed(dev, key, cycle)
            all_sent.update("c%d-%06d" % (cycle, i) for i in range(sent))
            self.assertGreater(len(accepted), 0, "cycle %d: nothing accepted before the kill" % cycle)
            self.gw.start()
            c = self.gw.device_client(dev, key)
            try:
                r = c.receiver("commands")
                after = [m.id for m in r.drain_until_idle(idle=1.0, timeout=30)]
            finally:
                c.close()
            fbc = self.gw.service_client("ops")
            try:
                fb = LogReader(fbc, "feedback")
                fb.settle_for(1.0)
                while True:  # until idle
                    before = len(fb.got)
                    fb.settle_for(0.5)
                    if len(fb.got) == before:
                        break
                reported = {m.correlation_id: fb_status(m) for m, _ in fb.got}
            finally:
                fbc.close()
            seen = set(received) | set(after)
            lost = accepted - seen - set(reported)
            self.assertFalse(lost, "cycle %d: %d of %d accepted commands neither delivered nor reported, e.g. %s"
                             % (cycle, len(lost), len(accepted), sorted(lost)[:5]))
            phantom = seen - all_sent
            self.assertFalse(phantom, "the device received commands nobody sent: %s" % sorted(phantom)[:5])
            # the device accepted everything: every accepted command ends `completed`
            not_done = sorted(mid for mid in accepted if reported.get(mid) != "completed")
            self.assertFalse(not_done, "cycle %d: accepted commands without feedback `completed`: %s (statuses %s)"
                             % (cycle, not_done[:5], [reported.get(x) for x in not_done[:5]]))
            dups = len(received) + len(after) - len(seen)
            print("cycle %d: %d redelivered after restart, %d duplicates" % (cycle, len(after), dups))
            self.assertEqual(self.queue_depth(dev), 0)


if __name__ == "__main__":
    unittest.main()
