"""TLS policy on the AMQPS listener, checked with the openssl CLI as an
independent client: only TLS 1.2 and newer, only forward-secret AEAD ciphers
for TLS 1.2 (configurable), and session resumption that saves handshake bytes."""
import re
import subprocess
import unittest

from warden_harness import WardenTestCase


def s_client(port, *args, stdin_delay=0.5):
    """Runs openssl s_client against the gateway; returns its combined output.
    stdin stays open stdin_delay seconds so that a TLS 1.3 session ticket,
    sent after the handshake, arrives before the client leaves."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "localhost"] + list(args)
    sleeper = subprocess.Popen(["sleep", str(stdin_delay)], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(cmd, stdin=sleeper.stdout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=10).stdout
    finally:
        sleeper.kill()
        sleeper.wait()
    return out.decode(errors="replace")


def negotiated(out):
    m = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    return (m.group(1), m.group(2)) if m else (None, None)


def handshake_bytes(out):
    m = re.search(r"SSL handshake has read (\d+) bytes and written (\d+) bytes", out)
    return int(m.group(1)) + int(m.group(2)) if m else None


class TlsPolicyTest(WardenTestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def port(self):
        return self.gw.ports["amqps"]

    def test_tls_1_0_and_1_1_are_refused(self):
        for version in ("-tls1", "-tls1_1"):
            proto, cipher = negotiated(s_client(self.port(), version))
            self.assertIn(cipher, (None, "(NONE)"), "%s negotiated %s" % (version, cipher))

    def test_tls_1_2_and_1_3_work(self):
        self.assertEqual(negotiated(s_client(self.port(), "-tls1_2"))[0], "TLSv1.2")
        self.assertEqual(negotiated(s_client(self.port(), "-tls1_3"))[0], "TLSv1.3")

    def test_tls_1_2_offers_forward_secret_aead_only(self):
        proto, cipher = negotiated(s_client(self.port(), "-tls1_2"))
        self.assertRegex(cipher, r"^ECDHE-.*(GCM|CHACHA20)")
        for weak in ("AES128-SHA", "AES256-SHA256", "ECDHE-ECDSA-AES128-SHA"):
            self.assertIn(negotiated(s_client(self.port(), "-tls1_2", "-cipher", weak))[1], (None, "(NONE)"),
                          "a weak cipher was accepted: %s" % weak)

    def test_reconnecting_clients_resume_and_save_handshake_bytes(self):
        import tempfile, os
        for version in ("-tls1_2", "-tls1_3"):
            with tempfile.TemporaryDirectory() as d:
                sess = os.path.join(d, "session.pem")
                full = s_client(self.port(), version, "-sess_out", sess)
                resumed = s_client(self.port(), version, "-sess_in", sess)
            self.assertRegex(resumed, re.compile(r"^Reused, TLSv1\.[23]", re.M), "%s did not resume" % version)
            before, after = handshake_bytes(full), handshake_bytes(resumed)
            self.assertLess(after, before, "%s: resumption saved nothing (%s -> %s bytes)" % (version, before, after))
            print("%s handshake: %d bytes full, %d resumed" % (version, before, after))


class TlsCipherConfigTest(WardenTestCase):
    def test_configured_cipher_list_is_used(self):
        gw = self.start_gateway(sections={"amqp": {"tls_ciphers": "ECDHE+CHACHA20"}})
        proto, cipher = negotiated(s_client(gw.ports["amqps"], "-tls1_2"))
        self.assertIn("CHACHA20", cipher)

    def test_a_cipher_list_openssl_rejects_stops_the_gateway(self):
        from warden_harness import Gateway
        gw = Gateway(sections={"amqp": {"tls_ciphers": "NO-SUCH-CIPHER"}})
        self.addCleanup(gw.cleanup)
        with self.assertRaises(AssertionError):
            gw.start(timeout=5)
        self.assertIn("tls_ciphers", gw.stderr())


if __name__ == "__main__":
    unittest.main()
