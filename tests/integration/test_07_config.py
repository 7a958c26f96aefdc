"""Running warden: bad configurations fail fast and say why; SIGTERM drains and exits 0;
start-up artefacts (dev certificate, admin token) and the health endpoint."""

import os
import stat
import subprocess
import time
import unittest

from warden_harness import (ANN_DEVICE, WARDEN_BIN, Gateway, Holder, WardenTestCase, _track,
                            kill_proc, new_id, sas_token, telemetry_message)


class BadConfigTest(WardenTestCase):

    def run_warden(self, gw, timeout=10.0):
        """Runs `warden serve --config` on gw's config; returns (exit code, stderr). Fails if it keeps running."""
        self.assertTrue(os.path.exists(WARDEN_BIN), "warden binary not found at %s" % WARDEN_BIN)
        p = subprocess.Popen([WARDEN_BIN, "serve", "--config", gw.config_path], cwd=gw.dir,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _track(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_proc(p)
            self.fail("warden kept running on a bad configuration (%.0fs)" % timeout)
        kill_proc(p)
        return p.returncode, err.decode("utf-8", errors="replace")

    def gateway(self, **kw):
        gw = Gateway(**kw)
        self.addCleanup(gw.cleanup)
        return gw

    def test_bad_values_and_unknown_keys_named(self):
        cases = [
            ("store", "max_size", "banana", "max_size"),
            ("store", "colour", "blue", "colour"),            # unknown key
            ("amqp", "listne", "127.0.0.1:0", "listne"),      # a typo must not be ignored
            ("auth", "dev_mode", "perhaps", "dev_mode"),
            ("amqp", "max_message_size", "lots", "max_message_size"),
        ]
        for section, key, value, word in cases:
            with self.subTest(key="%s.%s" % (section, key), value=value):
                gw = self.gateway(sections={section: {key: value}})
                rc, err = self.run_warden(gw)
                self.assertNotEqual(rc, 0, "warden accepted %s = %s" % (key, value))
                self.assertIn(word, err, "stderr does not name %r:\n%s" % (word, err))

    def test_tls_without_certificate_outside_dev_mode(self):
        # the generated development certificate is for dev_mode only
        gw = self.gateway(dev_mode=False)
        rc, err = self.run_warden(gw)
        self.assertNotEqual(rc, 0, "warden started TLS without a certificate and dev_mode off")
        self.assertIn("tls_cert", err)

    def test_unknown_section_named(self):
        gw = self.gateway(sections={"frobnicator": {"level": "11"}})
        rc, err = self.run_warden(gw)
        self.assertNotEqual(rc, 0)
        self.assertIn("frobnicator", err)

    def test_second_warden_on_the_same_store_refused(self):
        gw = self.start_gateway()
        dev, key = gw.create_device()
        rc, err = self.run_warden(gw)  # the same config: the same [store] path, other ports (0)
        self.assertNotEqual(rc, 0, "a second warden started on a store in use")
        self.assertIn("another process", err)
        gw.assert_alive()
        self.send_telemetry(self.device_client(gw, dev, key), [telemetry_message(b"first one still serves")])

    def test_missing_config_file(self):
        gw = self.gateway()
        os.unlink(gw.config_path)
        rc, err = self.run_warden(gw)
        self.assertNotEqual(rc, 0)
        self.assertTrue(err.strip(), "no message on stderr for a missing config file")


class LifecycleTest(WardenTestCase):

    def test_sigterm_when_idle_exits_zero(self):
        gw = self.start_gateway()
        t0 = time.monotonic()
        rc = gw.terminate(timeout=10)
        self.assertEqual(rc, 0, "exit code after SIGTERM; stderr:\n%s" % gw.stderr()[-2000:])
        self.assertLess(time.monotonic() - t0, 10)

    def test_sigterm_with_live_clients_drains_and_keeps_data(self):
        gw = self.start_gateway()
        dev, key = gw.create_device()
        devc = self.device_client(gw, dev, key)
        ids = [new_id("t") for _ in range(3)]
        self.send_telemetry(devc, [telemetry_message(b"before sigterm %d" % i, msg_id=mid)
                                       for i, mid in enumerate(ids)])
        svc = self.service_client(gw)
        r = svc.receiver("telemetry/drain", credit=1)
        self.assertEqual(r.wait_messages(1, timeout=5), 1)
        [(m, d)] = r.take()  # held unsettled across the shutdown
        self.assertEqual(m.id, ids[0])
        rc = gw.terminate(timeout=10)
        self.assertEqual(rc, 0, "exit code after SIGTERM with live connections; stderr:\n%s" % gw.stderr()[-2000:])
        # the clients learn that the gateway went away
        for c in (devc, svc):
            try:
                c.wait(lambda: False, 2.0)
            except Exception:
                pass
            self.assertTrue(c.bc.disconnected or c.remote_condition() is not None
                            or not (c.conn.state & c.conn.REMOTE_ACTIVE),
                            "a client connection outlived the gateway")
        gw.start()
        got = self.read_group(gw, "drain", ids, timeout=10)
        self.assertEqual(sorted(x.id for x in got), sorted(ids),
                         "after SIGTERM and restart the group must redeliver the unsettled message and keep the rest")
        self.assertTrue(all(x.annotations.get(ANN_DEVICE) == dev for x in got))

    def test_sigterm_closes_connections_with_an_amqp_close(self):
        # Draining ends each connection with an AMQP close frame (e.g. amqp:connection:forced), so
        # that clients can tell a shutdown from a crash and reconnect; not with a bare TCP reset.
        gw = self.start_gateway()
        dev, key = gw.create_device()
        h = Holder(gw.amqp_url, dev, sas_token(dev, key))
        self.addCleanup(h.stop)
        h.wait_ready()
        self.assertEqual(gw.terminate(timeout=10), 0)
        ev = None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            ev = h.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None or ev["event"] != "link_closed":
                break
        self.assertIsNotNone(ev, "the device saw nothing of the shutdown")
        self.assertEqual(ev["event"], "closed",
                         "on SIGTERM the device's connection was dropped without an AMQP close: %r" % ev)

    def test_startup_artefacts_and_health(self):
        gw = self.start_gateway()
        r = gw.rest("GET", "/healthz")
        self.assertEqual(r.status, 200, r)
        cert = gw.server_ca
        out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("DNS:localhost", out.stdout.decode())
        self.assertTrue(gw.token)
        # the admin token authenticates REST calls
        self.assertEqual(gw.rest("GET", "/v1/devices").status, 200)

    def test_secrets_not_world_readable(self):
        gw = self.start_gateway()
        for path in (os.path.join(gw.data, "admin.token"), os.path.join(gw.data, "tls", "dev-key.pem")):
            with self.subTest(path=os.path.basename(path)):
                mode = stat.S_IMODE(os.stat(path).st_mode)
                self.assertEqual(mode & 0o007, 0, "%s is world-accessible (mode %o)" % (path, mode))

    def test_restart_keeps_registry(self):
        gw = self.start_gateway()
        dev, key = gw.create_device()
        self.assertEqual(gw.terminate(), 0)
        gw.start()
        self.assertEqual(gw.rest("GET", "/v1/devices/" + dev).status, 200)
        c = self.device_client(gw, dev, key)
        self.send_telemetry(c, [telemetry_message(b"after restart")])


if __name__ == "__main__":
    unittest.main()
