"""Durability: every telemetry message settled `accepted` survives kill -9.

A device keeps many unsettled messages in flight; the test records each one the gateway
settles `accepted`, SIGKILLs the gateway at a random moment, restarts it on the same data
directory and reads everything back through a fresh consumer group. Repeated over a few
cycles; set WARDEN_IT_SEED to replay a run."""

import os
import random
import signal
import threading
import time
import unittest

from proton import ConnectionException

from warden_harness import ACCEPTED, ANN_DEVICE, ANN_SEQUENCE, WardenTestCase, telemetry_message

CYCLES = 3
IN_FLIGHT = 32
MAX_PER_CYCLE = 20000  # a guard; the kill comes long before


class CrashTest(WardenTestCase):

    def setUp(self):
        seed = int(os.environ.get("WARDEN_IT_SEED", str(int(time.time() * 1000) % 1000000)))
        print("crash test seed %d (WARDEN_IT_SEED to replay)" % seed)
        self.rng = random.Random(seed)

    def send_until_killed(self, gw, dev, key, cycle):
        """Streams telemetry until a timer SIGKILLs the gateway. Returns (accepted ids, sent count)."""
        c = gw.device_client(dev, key)
        s = c.sender("telemetry")
        pending = {}   # delivery tag -> message id
        accepted = set()
        other = []

        def on_outcome(tag, state):
            mid = pending.pop(tag, None)
            if state == ACCEPTED:
                accepted.add(mid)
            else:
                other.append((mid, state))

        s.h.on_outcome = on_outcome
        pid = gw.proc.pid
        timer = None
        n = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 15.0:
                while s.credit > 0 and len(pending) < IN_FLIGHT and n < MAX_PER_CYCLE:
                    mid = "c%d-%06d" % (cycle, n)
                    n += 1
                    dlv = s.send_async(telemetry_message(b"crash test payload " + mid.encode(), msg_id=mid))
                    pending[dlv.tag] = mid
                if timer is None and accepted:
                    # a random moment once the stream is flowing
                    timer = threading.Timer(self.rng.uniform(0.02, 0.5), os.kill, (pid, signal.SIGKILL))
                    timer.start()
                c.wait(lambda: s.credit > 0 and len(pending) < IN_FLIGHT and n < MAX_PER_CYCLE, 1.0)
        except ConnectionException:
            pass  # the gateway died under us
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
            gw.kill9()  # reaps it (and kills it, if the timer never fired)
            c.close()
        self.assertFalse(other, "telemetry settled other than accepted: %r" % other[:5])
        print("cycle %d: %d messages in flight (unsettled) at the kill" % (cycle, len(pending)))
        return accepted, n

    def test_accepted_telemetry_survives_kill9(self):
        # One check group reads after every restart. warden trims records every group has
        # acknowledged, so each cycle checks the messages accepted in that cycle (older ones were
        # checked, and acknowledged, in their own cycle; they may be delivered again, at least once).
        gw = self.start_gateway()
        dev, key = gw.create_device()
        seq_of = {}  # message id -> sequence number, across all cycles
        for cycle in range(CYCLES):
            accepted, sent = self.send_until_killed(gw, dev, key, cycle)
            print("cycle %d: sent %d, accepted %d before SIGKILL" % (cycle, sent, len(accepted)))
            self.assertGreater(len(accepted), 0, "cycle %d: nothing was accepted before the kill" % cycle)
            gw.start()
            msgs = self.read_group(gw, "crashcheck", accepted, device=dev, timeout=30.0)
            ids = [m.id for m in msgs]
            missing = accepted - set(ids)
            self.assertFalse(missing, "cycle %d: %d of %d accepted messages lost after kill -9, e.g. %s"
                             % (cycle, len(missing), len(accepted), sorted(missing)[:5]))
            self.assertEqual(len(ids), len(set(ids)), "a message delivered twice in one read after restart")
            wrong = [m.id for m in msgs if m.annotations.get(ANN_DEVICE) != dev]
            self.assertFalse(wrong, "messages lost their x-opt-device-id: %s" % wrong[:5])
            for m in msgs:
                seq = m.annotations.get(ANN_SEQUENCE)
                self.assertEqual(seq_of.setdefault(m.id, seq), seq, "%s changed its sequence number" % m.id)
            by_seq = {}
            for mid, seq in seq_of.items():
                self.assertNotIn(seq, by_seq, "sequence number %s given to %s and %s" % (seq, by_seq.get(seq), mid))
                by_seq[seq] = mid
        # the recovered gateway still takes telemetry and numbers it after everything before
        c = self.device_client(gw, dev, key)
        self.send_telemetry(c, [telemetry_message(b"after the crashes", msg_id="final")])
        msgs = self.read_group(gw, "crashcheck", {"final"}, device=dev, timeout=10.0)
        final = [m for m in msgs if m.id == "final"]
        self.assertEqual(len(final), 1)
        self.assertGreater(final[0].annotations[ANN_SEQUENCE], max(seq_of.values()),
                           "a sequence number was reused after the crashes")


if __name__ == "__main__":
    unittest.main()
