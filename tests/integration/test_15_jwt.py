"""Bearer JWTs on REST (issue #4, CONTRACT.md "REST projection": "a JWT from a configured issuer whose
claims carry scopes (and may limit the devices a caller can reach)").

warden is configured with [auth] jwt_issuer, jwt_public_key (RSA for RS256, P-256 for ES256) and
jwt_audience (default "warden"). Tokens are made here with the openssl CLI. Checked: accepted tokens
(scope string, scopes array), every refusal as 401 (expired, not yet valid, no exp, wrong iss, wrong
aud, wrong key, alg none, HS256 with the public key as secret, tampering, ES256 vs an RSA key), a
missing scope as 403, the `devices` and `groups` restrictions (403 elsewhere, filtered device list,
group notifications, SSE), service secrets still working, and a bad jwt_public_key stopping warden
with a message that names the key."""

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from proton import Message

from rest_helpers import (JwtIssuer, RestAssertions, SseStream, b64url, claims, dev_path)
from warden_harness import (ACCEPTED, NOSCOPE_SECRET, WARDEN_BIN, Gateway, WardenTestCase, new_id)

ISS = "https://issuer.warden-tests.example/"
AUD = "warden-tests"
ALL_SCOPES = "telemetry:read commands:send notifications:send registry:read registry:write"


class JwtCase(WardenTestCase, RestAssertions):

    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix="warden-jwt-")
        cls.addClassCleanup(shutil.rmtree, cls.scratch, True)
        cls.rsa = JwtIssuer(cls.scratch, "rsa", "rsa")
        cls.other_rsa = JwtIssuer(cls.scratch, "rsa", "other-rsa")
        cls.ec = JwtIssuer(cls.scratch, "ec", "ec")
        cls.gw = cls.start_class_gateway(sections={"auth": {"jwt_issuer": ISS, "jwt_public_key": cls.rsa.pub,
                                                            "jwt_audience": AUD}})

    def tearDown(self):
        self.gw.assert_alive()

    def tok(self, issuer=None, **kw):
        """A token from `issuer` (default: the configured RSA key); a claim given as None is left out."""
        kw.setdefault("scope", ALL_SCOPES)
        kw.setdefault("aud", AUD)
        drop = [k for k, v in kw.items() if v is None]
        c = claims(kw.pop("iss", ISS) or "", **{k: v for k, v in kw.items() if v is not None})
        for k in drop:
            c.pop(k, None)
        return (issuer or self.rsa).token(c)

    def get(self, path, token):
        return self.gw.rest("GET", path, token=token)

    def command(self, dev, token, body=b"cmd"):
        return self.gw.rest("POST", dev_path(dev, "/commands?ttl=60"), body, token=token,
                            headers={"Content-Type": "text/plain"})

    def assert401(self, token, what):
        r = self.get("/v1/devices", token)
        self.assertError(r, 401, msg="%s: expected 401, got %r" % (what, r))
        self.assertIn("Bearer", r.headers.get("www-authenticate", ""), r.headers)
        r = self.command(self.dev, token)
        self.assertError(r, 401, msg="%s (POST command): expected 401, got %r" % (what, r))


class JwtAcceptTest(JwtCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dev, cls.key = cls.gw.create_device(new_id("jwt"))

    def test_rs256_token_with_scope_string(self):
        t = self.tok(scope="openid commands:send registry:read profile")
        r = self.get(dev_path(self.dev), t)
        self.assertEqual(r.status, 200, r)
        r = self.command(self.dev, t)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.get(dev_path(self.dev, "/commands/" + r.json["messageId"]), t).status, 200)
        # scopes it lacks
        self.assertError(self.gw.rest("PUT", dev_path(new_id("jwt")), {}, token=t), 403)
        self.assertError(self.gw.rest("POST", dev_path(self.dev, "/notifications"), b"x", token=t), 403)
        s = SseStream(self.gw.http_port, t)
        self.assertError(s.response(), 403)

    def test_scopes_array_and_union(self):
        t = self.tok(scope=None, scopes=["registry:write", "registry:read"])
        dev = new_id("jwt")
        r = self.gw.rest("PUT", dev_path(dev), {}, token=t)
        self.assertEqual(r.status, 201, r)
        self.assertError(self.command(dev, t), 403)
        t = self.tok(scope="commands:send", scopes=["notifications:send"])
        self.assertEqual(self.command(dev, t).status, 202)
        self.assertEqual(self.gw.rest("POST", dev_path(dev, "/notifications"), b"n", token=t).status, 202)
        self.assertError(self.get(dev_path(dev), t), 403)

    def test_time_claims_and_audience_forms(self):
        now = int(time.time())
        self.assertEqual(self.get("/v1/devices", self.tok(nbf=now - 60)).status, 200, "nbf in the past")
        self.assertEqual(self.get("/v1/devices", self.tok(exp=now - 5)).status, 200, "within the 30 s clock skew")
        self.assertEqual(self.get("/v1/devices", self.tok(nbf=now + 5)).status, 200, "within the 30 s clock skew")
        self.assertEqual(self.get("/v1/devices", self.tok(aud=["someone-else", AUD])).status, 200,
                         "aud as an array that names this audience")
        self.assertEqual(self.get("/v1/devices", self.tok(exp=now + 3600, extra_claim=None)).status, 200)

    def test_no_scope_is_403(self):
        t = self.tok(scope="")
        self.assertError(self.get(dev_path(self.dev), t), 403)
        self.assertError(self.command(self.dev, t), 403)
        t = self.tok(scope=None)
        self.assertError(self.get(dev_path(self.dev), t), 403)
        # a valid token with no scope at all may still read /metrics ("any valid token")
        r = self.get("/metrics", t)
        if r.status != 404:
            self.assertEqual(r.status, 200, r)

    def test_service_secrets_still_work(self):
        self.assertEqual(self.get(dev_path(self.dev), self.gw.token).status, 200)
        self.assertEqual(self.get(dev_path(self.dev), NOSCOPE_SECRET).status, 200)
        self.assertError(self.command(self.dev, NOSCOPE_SECRET), 403)


class JwtRejectTest(JwtCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dev, cls.key = cls.gw.create_device(new_id("jwt"))

    def test_expired_and_not_yet_valid(self):
        now = int(time.time())
        self.assert401(self.tok(exp=now - 300), "expired 5 minutes ago")
        self.assert401(self.tok(exp=now - 3600, nbf=now - 7200), "expired an hour ago")
        self.assert401(self.tok(nbf=now + 600), "nbf 10 minutes ahead")
        self.assert401(self.tok(exp=None), "no exp")
        self.assert401(self.tok(exp="tomorrow"), "exp not a number")

    def test_wrong_issuer_or_audience(self):
        self.assert401(self.tok(iss="https://evil.example/"), "wrong iss")
        self.assert401(self.tok(iss=ISS.rstrip("/")), "iss differing by a slash")
        self.assert401(self.tok(iss=None), "no iss")
        self.assert401(self.tok(aud="warden"), "default audience, but this gateway wants %s" % AUD)
        self.assert401(self.tok(aud=["a", "b"]), "aud array without ours")
        self.assert401(self.tok(aud=None), "no aud")

    def test_wrong_key_and_algorithms(self):
        self.assert401(self.tok(issuer=self.other_rsa), "RS256 signed by another key")
        self.assert401(self.tok(issuer=self.ec), "ES256 while the configured key is RSA")
        good = self.tok()
        h, p, s = good.split(".")
        # alg none, unsigned and with the real signature kept
        none_hdr = b64url(json.dumps({"alg": "none", "typ": "JWT"}))
        self.assert401(none_hdr + "." + p + ".", "alg none, empty signature")
        self.assert401(none_hdr + "." + p + "." + s, "alg none with a signature")
        # HS256 keyed with the issuer's public key PEM (key confusion) and with a guessable secret
        hs_hdr = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}))
        for secret in (self.rsa.public_pem(), b"secret"):
            mac = hmac.new(secret, (hs_hdr + "." + p).encode(), hashlib.sha256).digest()
            self.assert401(hs_hdr + "." + p + "." + b64url(mac), "HS256 with secret %r" % secret[:20])
        rs_lower = b64url(json.dumps({"alg": "rs256", "typ": "JWT"}))
        self.assert401(rs_lower + "." + p + "." + b64url(self.rsa.sign(rs_lower + "." + p)), "alg rs256 (lowercase)")
        rs512 = b64url(json.dumps({"alg": "RS512", "typ": "JWT"}))
        self.assert401(rs512 + "." + p + "." + b64url(self.rsa.sign(rs512 + "." + p)), "alg RS512")

    def test_tampering_and_garbage(self):
        good = self.tok(scope="registry:read")
        h, p, s = good.split(".")
        forged = b64url(json.dumps(claims(ISS, aud=AUD, scope=ALL_SCOPES)))
        self.assert401(h + "." + forged + "." + s, "claims changed after signing")
        bad_sig = s[:-4] + ("AAAA" if s[-4:] != "AAAA" else "BBBB")
        self.assert401(h + "." + p + "." + bad_sig, "signature altered")
        self.assert401(h + "." + p, "two segments")
        self.assert401("not-a-jwt", "garbage")
        self.assert401(good + "x", "junk appended")
        self.assert401(h + "." + p + "." + s + ".", "four segments")
        self.assertEqual(self.get("/v1/devices", good).status, 200, "the untampered token itself is good")


class JwtRestrictionTest(JwtCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.group = new_id("grp")
        cls.other_group = new_id("grp")
        cls.a, cls.ka = cls.gw.create_device(new_id("a"))
        cls.b, cls.kb = cls.gw.create_device(new_id("b"))
        cls.g1, cls.kg1 = cls.gw.create_device(new_id("g1"), {"groups": [cls.group]})
        cls.g2, cls.kg2 = cls.gw.create_device(new_id("g2"), {"groups": [cls.group, cls.other_group]})
        cls.h1, cls.kh1 = cls.gw.create_device(new_id("h1"), {"groups": [cls.other_group]})
        cls.dev = cls.a

    def listed(self, token):
        out, cursor = [], None
        for _ in range(20):
            r = self.get("/v1/devices?limit=2" + ("&cursor=" + cursor if cursor else ""), token)
            self.assertEqual(r.status, 200, r)
            out += [d["id"] for d in r.json["devices"]]
            cursor = r.json["nextCursor"]
            if cursor is None:
                break
        return sorted(out)

    def test_devices_claim_limits_the_devices(self):
        t = self.tok(devices=[self.a])
        self.assertEqual(self.get(dev_path(self.a), t).status, 200)
        r = self.command(self.a, t)
        self.assertEqual(r.status, 202, r)
        mid = r.json["messageId"]
        self.assertEqual(self.get(dev_path(self.a, "/commands/" + mid), t).status, 200)
        self.assertEqual(self.gw.rest("POST", dev_path(self.a, "/notifications"), b"n", token=t).status, 202)
        for method, path, body in (("GET", dev_path(self.b), None),
                                   ("POST", dev_path(self.b, "/commands"), b"x"),
                                   ("POST", dev_path(self.b, "/commands?wait=2"), b"x"),
                                   ("POST", dev_path(self.b, "/notifications"), b"x"),
                                   ("GET", dev_path(self.b, "/commands/" + mid), None),
                                   ("DELETE", dev_path(self.b, "/commands"), None),
                                   ("PUT", dev_path(self.b), {}),
                                   ("POST", dev_path(self.b, "/disable"), None),
                                   ("POST", dev_path(self.b, "/keys/rotate"), None),
                                   ("DELETE", dev_path(self.b), None),
                                   ("PUT", dev_path(new_id("new")), {}),
                                   ("POST", "/v1/groups/%s/notifications" % self.group, b"x")):
            self.assertError(self.gw.rest(method, path, body, token=t), 403,
                             msg="%s %s with a token limited to %s" % (method, path, self.a))
        self.assertEqual(self.get(dev_path(self.b), self.gw.token).json["enabled"], True, "b was changed")
        self.assertEqual(self.listed(t), [self.a], "a restricted caller's list shows only its devices")
        self.assertEqual(self.get(dev_path(self.a, "/commands/" + mid), self.gw.token).json["status"], "queued")
        self.assertEqual(self.gw.rest("DELETE", dev_path(self.a, "/commands"), token=t).status, 200)

    def test_groups_claim_limits_devices_and_group_notifications(self):
        t = self.tok(groups=[self.group])
        for dev in (self.g1, self.g2):
            self.assertEqual(self.get(dev_path(dev), t).status, 200, dev)
            self.assertEqual(self.command(dev, t).status, 202, dev)
        for dev in (self.a, self.h1):
            self.assertError(self.get(dev_path(dev), t), 403)
            self.assertError(self.command(dev, t), 403)
        r = self.gw.rest("POST", "/v1/groups/%s/notifications" % self.group, b"to the group", token=t)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json.get("devices"), 2, r.json)
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications" % self.other_group, b"x", token=t), 403)
        self.assertEqual(self.listed(t), sorted([self.g1, self.g2]))
        # both claims: the union of what each reaches
        t = self.tok(devices=[self.a], groups=[self.other_group])
        self.assertEqual(self.listed(t), sorted([self.a, self.g2, self.h1]))
        self.assertError(self.command(self.b, t), 403)
        self.assertError(self.gw.rest("POST", "/v1/groups/%s/notifications" % self.group, b"x", token=t), 403)
        self.assertEqual(self.gw.rest("POST", "/v1/groups/%s/notifications" % self.other_group, b"x",
                                      token=t).status, 202)

    def test_restricted_caller_cannot_name_unreachable_peers(self):
        """A token limited to device x may not make x a peer of a device it cannot reach: with
        registry:write it could then rotate x's key, connect as x and command that device over AMQP
        (observed end to end: PUT {"peers":[y]} 200, rotate 200, y receives x's command)."""
        x, _ = self.gw.create_device(new_id("x"))
        y, ky = self.gw.create_device(new_id("y"))
        t = self.tok(devices=[x], scope="registry:read registry:write")
        r = self.gw.rest("PUT", dev_path(x), {"peers": [y]}, token=t)
        self.assertError(r, 403, msg="a token limited to %s set its peers to %s: %r" % (x, y, r))
        r = self.gw.rest("PUT", dev_path(x), {"peers": [self.group]}, token=t)
        self.assertError(r, 403, msg="a token limited to %s named group %s as peers: %r" % (x, self.group, r))
        self.assertEqual(self.get(dev_path(x), self.gw.token).json["peers"], [])
        self.assertEqual(self.gw.rest("PUT", dev_path(x), {"peers": [x]}, token=t).status, 200,
                         "peers it reaches are fine")

    def test_restricted_unknown_device(self):
        ghost = new_id("ghost")
        self.assertError(self.command(ghost, self.tok(devices=[ghost])), 404)
        self.assertError(self.command(ghost, self.tok(devices=[self.a])), 403)

    def test_malformed_restrictions_are_refused(self):
        self.assert401(self.tok(devices=self.a), "devices not an array")
        self.assert401(self.tok(devices=["bad id!"]), "devices with an invalid id")
        self.assert401(self.tok(groups=[1, 2]), "groups not strings")
        # an empty list reaches nothing
        t = self.tok(devices=[])
        self.assertError(self.command(self.a, t), 403)
        self.assertEqual(self.listed(t), [])

    def test_restricted_telemetry_stream(self):
        t = self.tok(devices=[self.a])
        self.assertError(SseStream(self.gw.http_port, t).response(), 403)
        self.assertError(SseStream(self.gw.http_port, t, query="?device=" + self.b).response(), 403)
        s = SseStream(self.gw.http_port, t, query="?device=" + self.a)
        self.addCleanup(s.close)
        self.assertEqual(s.status, 200, s.body)
        ca = self.device_client(self.gw, self.a, self.ka)
        cb = self.device_client(self.gw, self.b, self.kb)
        sb, sa = cb.sender("telemetry"), ca.sender("telemetry")
        self.assertEqual(sb.send(Message(body=b"not yours", inferred=True, content_type="text/plain")), ACCEPTED)
        self.assertEqual(sa.send(Message(body=b"yours", inferred=True, content_type="text/plain")), ACCEPTED)
        ev = s.next(5)
        self.assertIsNotNone(ev, "no event for the allowed device")
        self.assertEqual((ev["json"]["deviceId"], ev["json"]["body"]), (self.a, "yours"))
        self.assertEqual(s.drain(0.5), [])
        # a group-restricted token streams a member of its group
        tg = self.tok(groups=[self.group])
        s2 = SseStream(self.gw.http_port, tg, query="?device=" + self.g1)
        self.addCleanup(s2.close)
        self.assertEqual(s2.status, 200, s2.body)
        self.assertError(SseStream(self.gw.http_port, tg, query="?device=" + self.h1).response(), 403)


class Es256Test(WardenTestCase, RestAssertions):
    """An ES256 issuer (P-256 key) and the default audience "warden"."""

    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix="warden-jwt-")
        cls.addClassCleanup(shutil.rmtree, cls.scratch, True)
        cls.ec = JwtIssuer(cls.scratch, "ec", "ec")
        cls.other_ec = JwtIssuer(cls.scratch, "ec", "other-ec")
        cls.rsa = JwtIssuer(cls.scratch, "rsa", "rsa")
        cls.gw = cls.start_class_gateway(sections={"auth": {"jwt_issuer": ISS, "jwt_public_key": cls.ec.pub}})

    def tearDown(self):
        self.gw.assert_alive()

    def test_es256_with_default_audience(self):
        dev, _ = self.gw.create_device(new_id("es"))
        ok = self.ec.token(claims(ISS, scope=ALL_SCOPES))  # aud "warden"
        r = self.gw.rest("POST", dev_path(dev, "/commands"), b"x", token=ok)
        self.assertEqual(r.status, 202, r)
        for what, t in (("aud other than the default", self.ec.token(claims(ISS, aud=AUD, scope=ALL_SCOPES))),
                        ("another P-256 key", self.other_ec.token(claims(ISS, scope=ALL_SCOPES))),
                        ("RS256 against an EC key", self.rsa.token(claims(ISS, scope=ALL_SCOPES))),
                        ("expired", self.ec.token(claims(ISS, scope=ALL_SCOPES, exp=int(time.time()) - 300)))):
            r = self.gw.rest("GET", dev_path(dev), token=t)
            self.assertError(r, 401, msg=what)


class BadKeyConfigTest(WardenTestCase):
    """A jwt_public_key warden cannot use stops it at start, naming the key."""

    def run_with(self, auth):
        gw = Gateway(sections={"auth": auth})
        self.addCleanup(shutil.rmtree, gw.dir, True)
        try:
            r = subprocess.run([WARDEN_BIN, "serve", "--config", gw.config_path], cwd=gw.dir, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
        except subprocess.TimeoutExpired:
            self.fail("warden kept running with [auth] %r" % auth)
        return r.returncode, r.stderr.decode(errors="replace")

    def test_bad_public_key_files(self):
        scratch = tempfile.mkdtemp(prefix="warden-jwt-")
        self.addCleanup(shutil.rmtree, scratch, True)
        garbage = os.path.join(scratch, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
        empty = os.path.join(scratch, "empty.pem")
        open(empty, "w").close()
        p384 = JwtIssuer(scratch, "ec384", "p384")
        cases = [("missing file", os.path.join(scratch, "nope.pem")), ("garbage", garbage), ("empty", empty),
                 ("a P-384 key", p384.pub), ("a directory", scratch)]
        for what, path in cases:
            rc, err = self.run_with({"jwt_issuer": ISS, "jwt_public_key": path})
            self.assertNotEqual(rc, 0, "%s: warden started; stderr:\n%s" % (what, err))
            self.assertIn("[auth] jwt_public_key", err, "%s: the error should name the key:\n%s" % (what, err))
            self.assertNotIn("listening http", err, "%s: REST listened before the key was checked" % what)
        rc, err = self.run_with({"jwt_issuer": ISS})
        self.assertNotEqual(rc, 0, err)
        self.assertIn("jwt_public_key", err)


if __name__ == "__main__":
    unittest.main()
