"""Durability under mixed load across 50 kill -9 cycles (issue #5 item 4; CONTRACT.md "Durability":
everything settled `accepted` or answered 2xx survives kill -9 and a restart; unsettled deliveries
are redelivered).

One gateway data directory serves every cycle. Per cycle the gateway starts on it, and for a random
0.3-1.2 s, concurrently (a thread and a connection each):
  - two devices send unsettled telemetry with unique ids (ids recorded when settled `accepted`)
    and, on the same connection (a device has one), receive on `commands` and accept;
  - a service enqueues unsettled commands for them, one in ten with a short TTL (ids recorded when
    settled `accepted`);
  - a service reads `telemetry/check` and `feedback`, accepting everything;
  - the registry gets a device created and another's key rotated over REST at random moments;
then the gateway is SIGKILLed by pid. After the last cycle it starts once more and everything is
drained and checked: no accepted telemetry unread, no accepted command neither received by its
device nor reported in feedback, every command ended with one status, every dead-lettered command on
`deadletter`, no message delivered twice within one gateway lifetime, and every device created or
rotated with a 2xx answer logs in with its (newest) key while rotated-out keys stay refused.

WARDEN_IT_SEED replays the random choices (timing still varies); WARDEN_IT_CYCLES overrides 50."""

import collections
import os
import random
import time
import unittest

from crash_cycle_helpers import (READ_CREDIT, CommandSender, Consumer, Control, DeviceWorker, Ledger, RegistryWorker,
                                 drain, quiet_close, random_for)
from warden_harness import (ACCEPTED, DEFAULT_SERVICES, UNAUTHORIZED, Gateway, WardenTestCase, connect_error, new_id,
                            telemetry_message)

CYCLES = int(os.environ.get("WARDEN_IT_CYCLES", "50"))
WINDOW = (0.3, 1.2)

SERVICES = dict(DEFAULT_SERVICES)
SERVICES.update({
    "crashops": ("crashops-secret-for-tests", "commands:send"),
    "checker": ("checker-secret-for-tests", "telemetry:read feedback:read"),
})

END_STATUSES = {"completed", "expired", "delivery-count-exceeded"}  # the devices accept everything
DEAD_STATUSES = {"expired", "delivery-count-exceeded"}


def dups_within_lifetime(records):
    """records: iterable of (lifetime, key). Returns {(lifetime, key): count} for counts > 1."""
    c = collections.Counter(records)
    return {k: n for k, n in c.items() if n > 1}


class CrashCyclesTest(WardenTestCase):

    def setUp(self):
        seed = int(os.environ.get("WARDEN_IT_SEED", str(int(time.time() * 1000) % 1000000)))
        print("crash cycles seed %d (WARDEN_IT_SEED to replay), %d cycles" % (seed, CYCLES), flush=True)
        self.rng = random.Random(seed)

    def fail_with_log(self, gw, msg):
        self.fail("%s\nwarden stderr (start %d, tail):\n%s" % (msg, gw.starts, gw.stderr()[-4000:]))

    def check_sanitizers(self, gw):
        log = gw.stderr()
        for mark in Gateway.SANITIZER_MARKS:
            if mark in log:
                at = log.index(mark)
                self.fail("sanitizer report in warden's log (start %d):\n%s"
                          % (gw.starts, log[max(0, at - 200):at + 3000]))
        # A record a killed warden journaled is always one its successor takes: a refused one would be an
        # acknowledged append dropped.
        if "is not replayed" in log:
            at = log.index("is not replayed")
            self.fail("warden refused a journal record it wrote (start %d):\n%s"
                      % (gw.starts, log[max(0, at - 300):at + 300]))

    # ------------------------------------------------------------------ one cycle
    def run_cycle(self, gw, cycle, devices, ledger):
        t0 = time.monotonic()
        if not gw.alive():
            try:
                gw.start()
            except AssertionError as e:
                self.fail("cycle %d: warden did not start again on its store after kill -9 number %d:\n%s"
                          % (cycle, cycle, e))
        t_started = time.monotonic()
        ctl = Control(cycle)
        window = self.rng.uniform(*WINDOW)
        workers = [DeviceWorker(gw, ctl, ledger, random_for(self.rng), dev, key, i)
                   for i, (dev, key) in enumerate(devices)]
        workers += [CommandSender(gw, ctl, ledger, random_for(self.rng), [d for d, _ in devices]),
                    Consumer(gw, ctl, ledger, random_for(self.rng)),
                    RegistryWorker(gw, ctl, ledger, random_for(self.rng), window)]
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.ready.wait(10.0)
            errors = [w.error for w in workers if w.error]
            if errors:
                self.fail_with_log(gw, "cycle %d: a client failed while connecting:\n%s" % (cycle, "\n".join(errors)))
            t_ready = time.monotonic()
            time.sleep(window)
            if not gw.alive():
                self.fail_with_log(gw, "cycle %d: warden exited on its own (status %s)" % (cycle, gw.proc.returncode))
            ctl.killed.set()
            gw.kill9()  # by pid, reaped
            t_kill = time.monotonic()
        finally:
            ctl.killed.set()
            gw.kill9()
            ctl.stop.set()
            for w in workers:
                w.join(10.0)
        stuck = [w.name for w in workers if w.is_alive()]
        self.assertFalse(stuck, "cycle %d: clients still running 10 s after the kill: %s" % (cycle, stuck))
        errors = [w.error for w in workers if w.error]
        if errors:
            self.fail_with_log(gw, "cycle %d: client error while warden was up:\n%s" % (cycle, "\n".join(errors)))
        self.check_sanitizers(gw)
        d = [w.stats for w in workers[:2]]
        cs, co = workers[2].stats, workers[3].stats
        print("cycle %02d: start %.2f s, connect %.2f s, load %.2f s, teardown %.2f s | telemetry sent %d "
              "accepted %d | commands sent %d accepted %d, devices got %d | consumer read telemetry %d feedback %d"
              % (cycle, t_started - t0, t_ready - t_started, window, time.monotonic() - t_kill,
                 sum(x.get("sent", 0) for x in d), sum(x.get("accepted", 0) for x in d), cs.get("sent", 0),
                 cs.get("accepted", 0), sum(x.get("commands", 0) for x in d), co.get("telemetry", 0),
                 co.get("feedback", 0)), flush=True)
        return t_ready

    # ------------------------------------------------------------------ after the last cycle
    def final_drain(self, gw, devices, ledger, lifetime):
        try:
            gw.start()
        except AssertionError as e:
            self.fail("warden did not start again on its store after the last kill -9:\n%s" % e)
        # the devices take what is still queued (and prove they still log in and send)
        for i, (dev, key) in enumerate(devices):
            c = gw.device_client(dev, key)
            try:
                r = c.receiver("commands", credit=READ_CREDIT)
                drain(c, {"commands": (r, "commands:" + dev)}, ledger, lifetime, idle=1.0, timeout=60.0)
                mid = "final-%d" % i
                ledger.tel_sent.add(mid)
                state = c.sender("telemetry").send(telemetry_message(b"after 50 crashes", msg_id=mid))
                self.assertEqual(state, ACCEPTED, "%s: telemetry after the crashes not accepted: %s" % (dev, state))
                ledger.tel_accepted[mid] = lifetime
            finally:
                quiet_close(c, 2.0)
        # the consumer reads until every accepted telemetry id was seen and every accepted command has
        # its outcome in feedback (then a little longer, to count duplicates)
        c = gw.service_client("checker")
        try:
            tel = c.receiver("telemetry/check", credit=READ_CREDIT)
            fb = c.receiver("feedback", credit=READ_CREDIT)

            def complete():
                read = {x[1] for x in ledger.tel_reads}
                ended = {x[1] for x in ledger.feedback}
                return set(ledger.tel_accepted) <= read and set(ledger.cmd_accepted) <= ended

            drain(c, {"telemetry": (tel, "telemetry"), "feedback": (fb, "feedback")}, ledger, lifetime,
                  until=complete, idle=1.0, timeout=90.0)
        finally:
            quiet_close(c, 2.0)
        dead = {x[1] for x in ledger.feedback if x[2] in DEAD_STATUSES}
        if dead:
            ops = gw.service_client("checker")
            try:
                dl = ops.receiver("deadletter", credit=READ_CREDIT)
                drain(ops, {"deadletter": (dl, "deadletter")}, ledger, lifetime,
                      until=lambda: dead <= {x[0] for x in ledger.deadletters}, idle=1.0, timeout=20.0)
            finally:
                quiet_close(ops, 2.0)

    # ------------------------------------------------------------------ the test
    def test_nothing_acknowledged_is_lost_across_kill9_cycles(self):
        t_start = time.monotonic()
        gw = self.start_gateway(services=SERVICES)
        devices = [gw.create_device(new_id("cc%d" % i), {"queueLimit": 100000}) for i in range(2)]
        ledger = Ledger()
        for dev, key in devices:
            ledger.reg_keys[dev] = key
        for cycle in range(CYCLES):
            self.run_cycle(gw, cycle, devices, ledger)
        t_cycles = time.monotonic() - t_start
        lifetime = CYCLES  # the final gateway lifetime
        self.final_drain(gw, devices, ledger, lifetime)
        self.check_sanitizers(gw)
        self.verify(gw, devices, ledger, lifetime, t_cycles, t_start)

    def verify(self, gw, devices, ledger, lifetime, t_cycles, t_start):
        L = ledger
        dev_of_index = {str(i): dev for i, (dev, _) in enumerate(devices)}
        targets = {dev for dev, _ in devices}

        # ---- telemetry
        read_ids = {x[1] for x in L.tel_reads}
        accepted = set(L.tel_accepted)
        lost = accepted - read_ids
        phantom = read_ids - L.tel_sent
        tel_dups_total = len(L.tel_reads) - len(read_ids)
        tel_dups_life = dups_within_lifetime((x[0], x[1]) for x in L.tel_reads)
        wrong_dev = [(x[1], x[2]) for x in L.tel_reads
                     if not x[1].startswith("final-") and x[2] != dev_of_index.get(x[1].split("-")[1])]
        seq_of, seq_conflicts, by_seq = {}, [], {}
        for _, mid, _, seq in L.tel_reads:
            if seq_of.setdefault(mid, seq) != seq:
                seq_conflicts.append((mid, seq_of[mid], seq))
        for mid, seq in seq_of.items():
            if by_seq.setdefault(seq, mid) != mid:
                seq_conflicts.append((seq, by_seq[seq], mid))
        unacked_read = read_ids - accepted

        # ---- commands
        received_ids = {x[2] for x in L.cmd_received}
        fb_by_id = collections.defaultdict(set)
        fb_dev = {}
        for _, mid, status, fdev in L.feedback:
            fb_by_id[mid].add(status)
            fb_dev.setdefault(mid, fdev)
        cmd_accepted = set(L.cmd_accepted)
        cmd_lost = cmd_accepted - received_ids - set(fb_by_id)
        no_outcome = cmd_accepted - set(fb_by_id)
        conflicting = {m: sorted(s) for m, s in fb_by_id.items() if len(s) > 1}
        odd_status = {m: sorted(s) for m, s in fb_by_id.items() if not s <= END_STATUSES}
        fb_wrong_dev = {m: d for m, d in fb_dev.items() if m in L.cmd_target and d != L.cmd_target[m]}
        fb_phantom = set(fb_by_id) - set(L.cmd_target)
        completed_unreceived = {m for m, s in fb_by_id.items() if "completed" in s} - received_ids
        wrong_target = [(mid, dev) for _, dev, mid, _ in L.cmd_received if L.cmd_target.get(mid) != dev]
        cmd_dups_total = len(L.cmd_received) - len(received_ids)
        cmd_dups_life = dups_within_lifetime((x[0], x[2]) for x in L.cmd_received)
        long_ttl_expired = {m for m, s in fb_by_id.items() if "expired" in s} - L.cmd_short_ttl
        dead = {m for m, s in fb_by_id.items() if s & DEAD_STATUSES}
        dl_ids = {x[0] for x in L.deadletters}
        dead_missing = dead - dl_ids
        dl_unexpected = dl_ids - dead
        status_counts = collections.Counter(s for ss in fb_by_id.values() for s in ss)
        fb_dups_total = len(L.feedback) - len(fb_by_id)
        redelivery_counts = collections.Counter(x[3] for x in L.cmd_received)
        # a command received again in a later lifetime with delivery-count not above an earlier receipt's
        # (CONTRACT.md: redelivered "with delivery-count raised"); reported, not asserted: the device had
        # accepted it, and the gateway's durable delivery mark can trail the send (see test_12)
        by_cmd = collections.defaultdict(list)
        for life, _, mid, count in L.cmd_received:
            by_cmd[mid].append((life, count))
        count_not_raised = sorted(mid for mid, rs in by_cmd.items()
                                  if any(b[0] > a[0] and b[1] <= a[1] for a in rs for b in rs))

        # ---- registry
        reg_checked, reg_failures = 0, []
        for dev, key in sorted(L.reg_keys.items()):
            if dev in L.reg_ambiguous:
                continue
            reg_checked += 1
            r = gw.rest("GET", "/v1/devices/" + dev)
            if r.status != 200:
                reg_failures.append("%s: GET answered %r" % (dev, r))
                continue
            groups = (r.json or {}).get("groups")
            if dev not in targets and groups != ["crash-cycles"]:
                reg_failures.append("%s: groups %r, created with ['crash-cycles']" % (dev, groups))
            err = connect_error(lambda: gw.device_client(dev, key))
            if err is not None:
                reg_failures.append("%s: its current key (answered 2xx) is refused: %s" % (dev, err))
            for old in L.reg_revoked.get(dev, []):
                err = connect_error(lambda: gw.device_client(dev, old))
                if err is None or UNAUTHORIZED not in err:
                    reg_failures.append("%s: a key rotated out (answered 200) %s: %s"
                                        % (dev, "still logs in" if err is None else "refused oddly", err))
        depths = {}
        for dev, _ in devices:
            r = gw.rest("GET", "/v1/devices/" + dev)
            depths[dev] = (r.json or {}).get("queueDepth") if r.status == 200 else r

        # ---- the numbers, then the verdicts
        print("\n=== crash cycles: %d kill -9 cycles in %.1f s, %.1f s in all ===" %
              (CYCLES, t_cycles, time.monotonic() - t_start))
        print("telemetry: sent %d, settled accepted %d, read by the consumer %d distinct (%d reads, %d duplicates "
              "across restarts), %d read that were in flight unsettled at a kill, %d settled other than accepted"
              % (len(L.tel_sent), len(accepted), len(read_ids), len(L.tel_reads), tel_dups_total,
                 len(unacked_read), len(L.tel_other)))
        print("commands: sent %d (%d with a short TTL), settled accepted %d, received by their device %d distinct "
              "(%d receipts, %d duplicates; delivery-counts %s), feedback for %d (%d records, %d duplicates; %s), "
              "dead letters %d, %d settled other than accepted"
              % (len(L.cmd_target), len(L.cmd_short_ttl), len(cmd_accepted), len(received_ids), len(L.cmd_received),
                 cmd_dups_total, dict(sorted(redelivery_counts.items())), len(fb_by_id), len(L.feedback),
                 fb_dups_total, dict(status_counts), len(dl_ids), len(L.cmd_other)))
        print("commands received again with delivery-count not raised: %d%s"
              % (len(count_not_raised), (", e.g. %s" % [(m, by_cmd[m]) for m in count_not_raised[:3]])
                 if count_not_raised else ""))
        print("registry: %d creates and %d rotations answered 2xx, %d calls cut off by a kill; %d devices checked, "
              "%d rotated-out keys; queue depths after the drain %s"
              % (L.reg_ops["create"], L.reg_ops["rotate"], L.reg_ops["unanswered"], reg_checked,
                 sum(len(v) for v in L.reg_revoked.values()), depths))
        print("lost: telemetry %d, commands %d" % (len(lost), len(cmd_lost)), flush=True)

        problems = []

        def check(cond, msg, sample=None):
            if cond:
                problems.append(msg + ("" if sample is None else ", e.g. %s" % (sorted(sample, key=str)[:8],)))

        check(lost, "%d of %d telemetry messages settled accepted were never read (lost)" % (len(lost), len(accepted)),
              [(m, "accepted in cycle %s" % L.tel_accepted[m]) for m in lost])
        check(phantom, "%d telemetry ids read that nobody sent" % len(phantom), phantom)
        check(L.tel_other, "%d telemetry messages settled other than accepted" % len(L.tel_other), L.tel_other)
        check(tel_dups_life, "%d telemetry messages delivered twice within one gateway lifetime"
              % len(tel_dups_life), tel_dups_life.items())
        check(wrong_dev, "%d telemetry messages with the wrong x-opt-device-id" % len(wrong_dev), wrong_dev)
        check(seq_conflicts, "%d x-opt-sequence-number conflicts (changed or reused)" % len(seq_conflicts),
              seq_conflicts)
        check(cmd_lost, "%d of %d commands settled accepted neither reached their device nor have feedback (lost)"
              % (len(cmd_lost), len(cmd_accepted)), [(m, "accepted in cycle %s" % L.cmd_accepted[m]) for m in cmd_lost])
        check(no_outcome, "%d commands settled accepted have no feedback after the final drain"
              % len(no_outcome), [(m, L.cmd_accepted[m]) for m in no_outcome])
        check(L.cmd_other, "%d commands settled other than accepted" % len(L.cmd_other), L.cmd_other)
        check(conflicting, "%d commands with more than one feedback status" % len(conflicting), conflicting.items())
        check(odd_status, "%d commands ended with a status the devices never caused" % len(odd_status),
              odd_status.items())
        check(fb_wrong_dev, "%d feedback records name the wrong device-id" % len(fb_wrong_dev), fb_wrong_dev.items())
        check(fb_phantom, "%d feedback records for commands nobody sent" % len(fb_phantom), fb_phantom)
        check(completed_unreceived, "%d commands completed that no device received" % len(completed_unreceived),
              completed_unreceived)
        check(wrong_target, "%d commands delivered to the wrong device (or never sent)" % len(wrong_target),
              wrong_target)
        check(cmd_dups_life, "%d commands delivered twice within one gateway lifetime (accepted at once)"
              % len(cmd_dups_life), cmd_dups_life.items())
        check(long_ttl_expired, "%d commands with the 1 h default TTL reported expired" % len(long_ttl_expired),
              long_ttl_expired)
        check(dead_missing, "%d commands reported expired/delivery-count-exceeded are not on deadletter"
              % len(dead_missing), dead_missing)
        check(dl_unexpected, "%d dead letters without such feedback" % len(dl_unexpected), dl_unexpected)
        check(reg_failures, "%d registry problems" % len(reg_failures), reg_failures)
        check({d: v for d, v in depths.items() if v != 0}, "device queues not empty after the drain",
              depths.items())
        self.assertFalse(problems, "after %d kill -9 cycles:\n  - %s" % (CYCLES, "\n  - ".join(problems)))


if __name__ == "__main__":
    unittest.main()
