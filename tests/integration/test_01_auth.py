"""Authentication: SAS tokens over SASL PLAIN (plain TCP in dev mode, TLS always), client
certificates over SASL EXTERNAL, services, and everything that must be refused."""

import os
import tempfile
import shutil
import time
import unittest

from warden_harness import (BACKEND_SECRET, ANN_DEVICE, UNAUTHORIZED, AmqpClient, TestPKI,
                            WardenTestCase, cert_thumbprint, client_ssl_domain, connect_error, new_id,
                            random_key, sas_token, telemetry_message)


class DevModeAuthTest(WardenTestCase):
    """dev_mode = true, allow_key_password = false, generated development certificate."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def connect_device(self, user, password, tls=False):
        if tls:
            return AmqpClient(self.gw.amqps_url, user, password, ssl_domain=self.gw.client_ssl_domain())
        return AmqpClient(self.gw.amqp_url, user, password)

    def test_sas_token_over_plain_tcp_in_dev_mode(self):
        dev, key = self.gw.create_device()
        c = self.track(self.connect_device(dev, sas_token(dev, key)))
        self.send_telemetry(c, [telemetry_message(b"plain-tcp")])

    def test_sas_token_over_tls_with_generated_dev_certificate(self):
        self.assertTrue(os.path.exists(self.gw.server_ca), "no dev certificate at %s" % self.gw.server_ca)
        self.assertTrue(os.path.exists(os.path.join(self.gw.data, "tls", "dev-key.pem")))
        dev, key = self.gw.create_device()
        # the client verifies the certificate against the dev cert and the name "localhost"
        c = self.track(self.connect_device(dev, sas_token(dev, key), tls=True))
        self.send_telemetry(c, [telemetry_message(b"over-tls")])

    def test_tls_client_with_other_ca_fails(self):
        # the server really presents the dev certificate: a client trusting another CA is refused
        d = tempfile.mkdtemp(prefix="warden-it-pki-")
        self.addCleanup(shutil.rmtree, d, True)
        other = TestPKI(d)
        dev, key = self.gw.create_device()
        err = self.assertRefused(lambda: AmqpClient(self.gw.amqps_url, dev, sas_token(dev, key),
                                                    ssl_domain=client_ssl_domain(other.ca_pem)),
                                 condition=None)
        self.assertNotIn("Timeout", err)

    def test_raw_key_as_password_refused(self):
        dev, key = self.gw.create_device()
        self.assertRefused(lambda: self.connect_device(dev, key), "raw key accepted with allow_key_password=false")
        self.assertRefused(lambda: self.connect_device(dev, key, tls=True),
                           "raw key accepted over TLS with allow_key_password=false")
        # control: the same device with a proper token gets in
        self.track(self.connect_device(dev, sas_token(dev, key)))

    def test_expired_token_refused(self):
        dev, key = self.gw.create_device()
        expired = sas_token(dev, key, expiry=int(time.time()) - 60)
        self.assertRefused(lambda: self.connect_device(dev, expired), "expired token accepted")
        self.assertRefused(lambda: self.connect_device(dev, expired, tls=True), "expired token accepted over TLS")

    def test_token_for_another_device_refused(self):
        a, ka = self.gw.create_device()
        b, kb = self.gw.create_device()
        # A's valid token presented with username B
        self.assertRefused(lambda: self.connect_device(b, sas_token(a, ka)), "A's token accepted for B")
        # a token naming B's resource but signed with A's key
        self.assertRefused(lambda: self.connect_device(b, sas_token(b, ka)), "token for B signed with A's key accepted")
        # controls
        self.track(self.connect_device(a, sas_token(a, ka)))
        self.track(self.connect_device(b, sas_token(b, kb)))

    def test_wrong_signature_refused(self):
        dev, key = self.gw.create_device()
        self.assertRefused(lambda: self.connect_device(dev, sas_token(dev, random_key())), "forged token accepted")
        good = sas_token(dev, key)
        # flip one character of the signature
        i = good.index("sig=") + 6
        bad = good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1:]
        self.assertRefused(lambda: self.connect_device(dev, bad), "token with a modified signature accepted")
        # a later expiry with the old signature is not valid either
        se = int(good.rsplit("se=", 1)[1])
        stretched = good.rsplit("se=", 1)[0] + "se=%d" % (se + 3600)
        self.assertRefused(lambda: self.connect_device(dev, stretched), "token with extended expiry accepted")

    def test_token_for_other_hostname_refused(self):
        dev, key = self.gw.create_device()
        self.assertRefused(lambda: self.connect_device(dev, sas_token(dev, key, hostname="evil.example.com")),
                           "token for another hub's resource accepted")

    def test_malformed_passwords_refused(self):
        dev, key = self.gw.create_device()
        for pw in ["", "SharedAccessSignature", "SharedAccessSignature sr=&sig=&se=",
                   "SharedAccessSignature se=99999999999", "x" * 300]:
            with self.subTest(password=pw[:40]):
                self.assertRefused(lambda: self.connect_device(dev, pw))

    def test_sas_token_fields_in_any_order(self):
        # IoT Hub parses the token as a set of fields
        dev, key = self.gw.create_device()
        fields = dict(f.split("=", 1) for f in sas_token(dev, key)[len("SharedAccessSignature "):].split("&"))
        reordered = "SharedAccessSignature se=%s&sr=%s&sig=%s" % (fields["se"], fields["sr"], fields["sig"])
        c = self.track(self.connect_device(dev, reordered))
        self.send_telemetry(c, [telemetry_message(b"reordered")])

    def test_device_ids_with_punctuation(self):
        # ':' is percent-encoded in the token's resource; '.', '_' and '-' are not
        for dev in ("site:7." + new_id("a_b"), new_id("X")[:6]):
            with self.subTest(device=dev):
                dev, key = self.gw.create_device(dev)
                c = self.track(self.connect_device(dev, sas_token(dev, key)))
                self.send_telemetry(c, [telemetry_message(b"punctuated")])

    def test_device_id_equal_to_a_service_name(self):
        # A device named like a service must either be refused by the registry or be able to
        # log in with its own token; a 201 for a device that can never connect is a trap.
        r = self.gw.rest("PUT", "/v1/devices/noscope", {})
        if 400 <= r.status < 500:
            return
        self.assertEqual(r.status, 201, r)
        key = r.json["key"]
        try:
            err = connect_error(lambda: self.connect_device("noscope", sas_token("noscope", key), tls=True))
            self.assertIsNone(err, "device 'noscope' was created (201) but cannot authenticate with its own "
                                   "token: %s" % err)
        finally:
            self.gw.device_op("noscope", "delete")
        # the service of that name is unaffected either way
        self.track(AmqpClient(self.gw.amqp_url, "noscope", self.gw.services["noscope"][0]))

    def test_unknown_device_refused(self):
        ghost = new_id("ghost")
        self.assertRefused(lambda: self.connect_device(ghost, sas_token(ghost, random_key())))

    def test_disabled_device_refused_until_enabled(self):
        dev, key = self.gw.create_device()
        r = self.gw.device_op(dev, "disable")
        self.assertIn(r.status, (200, 204), r)
        self.assertRefused(lambda: self.connect_device(dev, sas_token(dev, key)), "disabled device accepted")
        self.assertRefused(lambda: self.connect_device(dev, sas_token(dev, key), tls=True),
                           "disabled device accepted over TLS")
        r = self.gw.device_op(dev, "enable")
        self.assertIn(r.status, (200, 204), r)
        c = self.track(self.connect_device(dev, sas_token(dev, key)))
        self.send_telemetry(c, [telemetry_message(b"enabled again")])

    def test_deleted_device_refused(self):
        dev, key = self.gw.create_device()
        self.track(self.connect_device(dev, sas_token(dev, key))).close()
        r = self.gw.device_op(dev, "delete")
        self.assertEqual(r.status, 204, r)
        self.assertRefused(lambda: self.connect_device(dev, sas_token(dev, key)), "deleted device accepted")

    def test_anonymous_refused(self):
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, mechs="ANONYMOUS"), "ANONYMOUS accepted")
        self.assertRefused(lambda: AmqpClient(self.gw.amqps_url, mechs="ANONYMOUS",
                                              ssl_domain=self.gw.client_ssl_domain()),
                           "ANONYMOUS accepted over TLS")

    def test_service_plain_login(self):
        c = self.service_client(self.gw)
        r = c.receiver("telemetry")
        self.assertFalse(r.closed_by_peer)
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, "backend", "wrong-secret"), "wrong service secret accepted")
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, "nosuchservice", BACKEND_SECRET),
                           "unknown service accepted")
        # a service secret is not a device credential and vice versa
        dev, key = self.gw.create_device()
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, dev, BACKEND_SECRET),
                           "device id with a service secret accepted")
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, "backend", sas_token(dev, key)),
                           "service name with a device token accepted")


class KeyPasswordTest(WardenTestCase):
    """allow_key_password = true: the base64 key itself is a valid password (a SAS token still is)."""

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway(allow_key_password=True)

    def test_raw_key_accepted_when_allowed(self):
        dev, key = self.gw.create_device()
        c = self.track(AmqpClient(self.gw.amqp_url, dev, key))
        self.send_telemetry(c, [telemetry_message(b"raw key")])
        self.track(AmqpClient(self.gw.amqp_url, dev, sas_token(dev, key))).close()
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, dev, random_key()), "wrong raw key accepted")
        other, okey = self.gw.create_device()
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, other, key), "A's raw key accepted for B")


class ProductionModeAuthTest(WardenTestCase):
    """dev_mode = false: PLAIN only over TLS."""

    @classmethod
    def setUpClass(cls):
        cls.pki_dir = tempfile.mkdtemp(prefix="warden-it-pki-")
        cls.addClassCleanup(shutil.rmtree, cls.pki_dir, True)
        cls.pki = TestPKI(cls.pki_dir)
        cls.gw = cls.start_class_gateway(dev_mode=False, tls_cert=cls.pki.server_pem, tls_key=cls.pki.server_key,
                                         server_ca=cls.pki.ca_pem)

    def tearDown(self):
        self.gw.assert_alive()

    def test_plain_refused_on_plain_tcp(self):
        dev, key = self.gw.create_device()
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, dev, sas_token(dev, key)),
                           "device PLAIN accepted over unencrypted TCP with dev_mode=false")
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, "backend", BACKEND_SECRET),
                           "service PLAIN accepted over unencrypted TCP with dev_mode=false")
        self.assertRefused(lambda: AmqpClient(self.gw.amqp_url, mechs="ANONYMOUS"))

    def test_plain_accepted_over_tls(self):
        dev, key = self.gw.create_device()
        c = self.track(AmqpClient(self.gw.amqps_url, dev, sas_token(dev, key), ssl_domain=self.gw.client_ssl_domain()))
        mid = new_id("m")
        self.send_telemetry(c, [telemetry_message(b"prod", msg_id=mid)])
        svc = self.track(AmqpClient(self.gw.amqps_url, "backend", BACKEND_SECRET,
                                    ssl_domain=self.gw.client_ssl_domain()))
        got = self.read_group(self.gw, new_id("g"), [mid], client=svc)
        self.assertEqual([m.id for m in got], [mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev)


class ExternalAuthTest(WardenTestCase):
    """Client certificates: tls_cert/tls_key signed by a test CA, tls_ca = that CA."""

    @classmethod
    def setUpClass(cls):
        cls.pki_dir = tempfile.mkdtemp(prefix="warden-it-pki-")
        cls.addClassCleanup(shutil.rmtree, cls.pki_dir, True)
        pki = cls.pki = TestPKI(cls.pki_dir)
        # CNs deliberately differ from device ids: identity comes from the registered thumbprint
        cls.cert, cls.key = pki.issue("client-a", "/CN=not-the-device-id/O=warden-it")
        cls.cert2, cls.key2 = pki.issue("client-b", "/CN=second/O=warden-it")
        cls.unreg_cert, cls.unreg_key = pki.issue("client-unregistered", "/CN=unregistered/O=warden-it")
        cls.foreign_cert, cls.foreign_key = pki.issue("client-foreign", "/CN=foreign", self_signed=True)
        cls.gw = cls.start_class_gateway(tls_cert=pki.server_pem, tls_key=pki.server_key, tls_ca=pki.ca_pem,
                                         server_ca=pki.ca_pem)

    def tearDown(self):
        self.gw.assert_alive()

    def external(self, cert, key):
        return AmqpClient(self.gw.amqps_url, mechs="EXTERNAL",
                          ssl_domain=client_ssl_domain(self.pki.ca_pem, cert, key))

    def test_external_with_registered_certificate(self):
        dev = new_id("x509")
        self.gw.create_device(dev, {"auth": {"key": True, "thumbprint": cert_thumbprint(self.cert)}})
        c = self.track(self.external(self.cert, self.key))
        mid = new_id("m")
        self.send_telemetry(c, [telemetry_message(b"by certificate", msg_id=mid)])
        got = self.read_group(self.gw, new_id("g"), [mid])
        self.assertEqual([m.id for m in got], [mid])
        self.assertEqual(got[0].annotations.get(ANN_DEVICE), dev,
                         "EXTERNAL must authenticate as the device that registered the thumbprint")

    def test_external_unregistered_certificate_refused(self):
        self.assertRefused(lambda: self.external(self.unreg_cert, self.unreg_key),
                           "EXTERNAL accepted a CA-signed certificate whose thumbprint is not registered")

    def test_external_untrusted_certificate_refused(self):
        dev = new_id("x509")
        # even registered, a certificate not issued by tls_ca must not get in
        self.gw.create_device(dev, {"auth": {"key": True, "thumbprint": cert_thumbprint(self.foreign_cert)}})
        self.assertRefused(lambda: self.external(self.foreign_cert, self.foreign_key),
                           "certificate from an untrusted issuer accepted", condition=None)

    def closed_within(self, client, action, limit=0.100):
        """Runs action() (a REST call); returns (response, seconds until the client saw the close, condition)."""
        r = action()
        t_rest = time.monotonic()
        try:
            client.wait(lambda: False, 2.0)
        except Exception as e:  # ConnectionClosed / ConnectionException
            return r, time.monotonic() - t_rest, str(e)
        return r, None, None

    def test_revocation_closes_external_connection(self):
        cert, key = self.pki.issue("client-rev-" + new_id(""), "/CN=revoked")
        dev = new_id("x509")
        self.gw.create_device(dev, {"auth": {"key": True, "thumbprint": cert_thumbprint(cert)}})
        c = self.track(self.external(cert, key))
        self.send_telemetry(c, [telemetry_message(b"x")])
        r, dt, err = self.closed_within(c, lambda: self.gw.device_op(dev, "disable"))
        self.assertIn(r.status, (200, 204), r)
        self.assertIsNotNone(dt, "certificate connection not closed after disable")
        self.assertIn(UNAUTHORIZED, err)
        self.assertLess(dt, 0.100, "closed %.1f ms after the REST response" % (dt * 1000))

    def test_changing_thumbprint_closes_connection_of_old_certificate(self):
        old_cert, old_key = self.pki.issue("client-old-" + new_id(""), "/CN=old")
        new_cert, new_key = self.pki.issue("client-new-" + new_id(""), "/CN=new")
        dev = new_id("x509")
        self.gw.create_device(dev, {"auth": {"key": True, "thumbprint": cert_thumbprint(old_cert)}})
        c = self.track(self.external(old_cert, old_key))
        self.send_telemetry(c, [telemetry_message(b"x")])
        r, dt, err = self.closed_within(c, lambda: self.gw.rest(
            "PUT", "/v1/devices/" + dev, {"groups": [], "peers": [],
                                          "auth": {"key": True, "thumbprint": cert_thumbprint(new_cert)}}))
        self.assertEqual(r.status, 200, r)
        self.assertIsNotNone(dt, "connection of the replaced certificate stayed open")
        self.assertIn(UNAUTHORIZED, err)
        self.assertLess(dt, 0.100)
        self.assertRefused(lambda: self.external(old_cert, old_key), "replaced certificate still accepted")
        c2 = self.track(self.external(new_cert, new_key))
        self.send_telemetry(c2, [telemetry_message(b"new cert")])

    def test_external_disabled_device_refused(self):
        dev = new_id("x509")
        self.gw.create_device(dev, {"auth": {"key": True, "thumbprint": cert_thumbprint(self.cert2)}})
        self.track(self.external(self.cert2, self.key2)).close()  # control
        r = self.gw.device_op(dev, "disable")
        self.assertIn(r.status, (200, 204), r)
        self.assertRefused(lambda: self.external(self.cert2, self.key2), "disabled device accepted by certificate")


if __name__ == "__main__":
    unittest.main()
