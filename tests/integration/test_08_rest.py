"""The registry over REST: create/update/get/list/delete, disable/enable/rotate, bearer
tokens and scopes, id validation, JSON errors."""

import base64
import unittest
import urllib.parse

from warden_harness import WardenTestCase, new_id, telemetry_message, wait_until


def dev_path(dev, suffix=""):
    return "/v1/devices/" + urllib.parse.quote(dev, safe="") + suffix


class RestTest(WardenTestCase):

    @classmethod
    def setUpClass(cls):
        cls.gw = cls.start_class_gateway()

    def tearDown(self):
        self.gw.assert_alive()

    def assertError(self, r, status):
        self.assertEqual(r.status, status, r)
        self.assertIsInstance(r.json, dict, "error body is not JSON: %r" % r)
        self.assertIsInstance(r.json.get("error"), str, r)
        self.assertIsInstance(r.json.get("message"), str, r)

    def test_create_get_and_key_shown_once(self):
        dev, key = self.gw.create_device()
        r = self.gw.rest("GET", dev_path(dev))
        self.assertEqual(r.status, 200, r)
        rec = r.json
        for field in ("id", "enabled", "groups", "peers", "queueLimit", "connected", "lastSeen", "queueDepth"):
            self.assertIn(field, rec, "device record lacks %r: %r" % (field, rec))
        self.assertEqual(rec["id"], dev)
        self.assertIs(rec["enabled"], True)
        self.assertEqual(rec["groups"], [])
        self.assertEqual(rec["peers"], [])
        self.assertIs(rec["connected"], False)
        self.assertNotIn("key", rec, "GET must not reveal the key")
        self.assertNotIn(key, r.body.decode(), "GET must not reveal the key")

    def test_create_with_full_body_then_update(self):
        dev = new_id()
        _, key = self.gw.create_device(dev, {"groups": ["g1"], "peers": [], "queueLimit": 7, "auth": {"key": True}})
        rec = self.gw.rest("GET", dev_path(dev)).json
        self.assertEqual(rec["groups"], ["g1"])
        self.assertEqual(rec["queueLimit"], 7)
        r = self.gw.rest("PUT", dev_path(dev), {"groups": ["g1", "g2"], "peers": [], "queueLimit": 9})
        self.assertEqual(r.status, 200, r)
        rec = self.gw.rest("GET", dev_path(dev)).json
        self.assertEqual(sorted(rec["groups"]), ["g1", "g2"])
        self.assertEqual(rec["queueLimit"], 9)
        # an update is not a rotation: the original key still authenticates
        c = self.device_client(self.gw, dev, key)
        self.send_telemetry(c, [telemetry_message(b"after update")])

    def test_list_with_cursor(self):
        prefix = new_id("list")
        mine = sorted("%s-%d" % (prefix, i) for i in range(5))
        for d in mine:
            self.gw.create_device(d)
        seen = []
        cursor = None
        for _ in range(200):  # bounded
            q = {"limit": "2"}
            if cursor:
                q["cursor"] = cursor
            r = self.gw.rest("GET", "/v1/devices?" + urllib.parse.urlencode(q))
            self.assertEqual(r.status, 200, r)
            self.assertIn("devices", r.json)
            self.assertIn("nextCursor", r.json)
            self.assertLessEqual(len(r.json["devices"]), 2, "limit=2 not honoured")
            seen.extend(d["id"] for d in r.json["devices"])
            cursor = r.json["nextCursor"]
            if cursor is None:
                break
        else:
            self.fail("pagination did not end")
        self.assertEqual(len(seen), len(set(seen)), "a device listed twice across pages")
        self.assertTrue(set(mine) <= set(seen), "devices missing from the list: %s" % (set(mine) - set(seen)))

    def test_delete(self):
        dev, _ = self.gw.create_device()
        self.assertEqual(self.gw.rest("DELETE", dev_path(dev)).status, 204)
        self.assertError(self.gw.rest("GET", dev_path(dev)), 404)
        self.assertError(self.gw.rest("DELETE", dev_path(dev)), 404)
        # the id can be registered again, with a new key
        _, key2 = self.gw.create_device(dev)
        self.assertTrue(key2)

    def test_disable_enable_reflected(self):
        dev, _ = self.gw.create_device()
        self.assertIn(self.gw.device_op(dev, "disable").status, (200, 204))
        self.assertIs(self.gw.rest("GET", dev_path(dev)).json["enabled"], False)
        self.assertIn(self.gw.device_op(dev, "enable").status, (200, 204))
        self.assertIs(self.gw.rest("GET", dev_path(dev)).json["enabled"], True)

    def test_rotate_returns_new_key(self):
        dev, key = self.gw.create_device()
        r = self.gw.device_op(dev, "keys/rotate")
        self.assertEqual(r.status, 200, r)
        new = r.json.get("key")
        self.assertEqual(len(base64.b64decode(new)), 32)
        self.assertNotEqual(new, key)

    def test_unknown_device(self):
        ghost = new_id("ghost")
        self.assertError(self.gw.rest("GET", dev_path(ghost)), 404)
        for op in ("disable", "enable", "keys/rotate"):
            with self.subTest(op=op):
                self.assertError(self.gw.device_op(ghost, op), 404)

    def test_bearer_token_required(self):
        for method, path, body in (("GET", "/v1/devices", None), ("PUT", dev_path(new_id()), {}),
                                   ("GET", dev_path("x"), None)):
            with self.subTest(method=method, path=path):
                self.assertError(self.gw.rest(method, path, body, token=None), 401)
                self.assertError(self.gw.rest(method, path, body, token="not-a-valid-token"), 401)
        r = self.gw.rest("GET", "/v1/devices", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}, token=None)
        self.assertError(r, 401)

    def test_scopes_enforced(self):
        dev, _ = self.gw.create_device()
        for name in ("noscope", "backend"):  # both have registry:read only
            secret = self.gw.services[name][0]
            with self.subTest(service=name):
                self.assertEqual(self.gw.rest("GET", "/v1/devices", token=secret).status, 200)
                self.assertEqual(self.gw.rest("GET", dev_path(dev), token=secret).status, 200)
                self.assertError(self.gw.rest("PUT", dev_path(new_id()), {}, token=secret), 403)
                self.assertError(self.gw.rest("POST", dev_path(dev, "/disable"), token=secret), 403)
                self.assertError(self.gw.rest("POST", dev_path(dev, "/keys/rotate"), token=secret), 403)
                self.assertError(self.gw.rest("DELETE", dev_path(dev), token=secret), 403)
        # nothing changed
        rec = self.gw.rest("GET", dev_path(dev)).json
        self.assertIs(rec["enabled"], True)

    def test_device_id_validation(self):
        # ids are [A-Za-z0-9._:-]{1,128}; "a/b" may also fail routing (404) once the server unescapes %2F
        for bad, allowed in (("bad id", (400,)), ("é", (400,)), ("x" * 129, (400,)), ("semi;colon", (400,)),
                             ("a/b", (400, 404))):
            with self.subTest(id=bad[:20]):
                r = self.gw.rest("PUT", dev_path(bad), {})
                self.assertIn(r.status, allowed, r)
                self.assertError(r, r.status)
        for good in ("A.b_c:d-1." + new_id(), "y" * 128):
            with self.subTest(id=good[:20]):
                self.gw.create_device(good)

    def test_bad_json_rejected(self):
        r = self.gw.rest("PUT", dev_path(new_id()), b"{not json", headers={"Content-Type": "application/json"})
        self.assertError(r, 400)
        r = self.gw.rest("PUT", dev_path(new_id()), {"queueLimit": "many"})
        self.assertError(r, 400)

    def test_connected_flag_follows_the_connection(self):
        dev, key = self.gw.create_device()
        c = self.gw.device_client(dev, key)
        try:
            self.send_telemetry(c, [telemetry_message(b"hi")])
            rec = self.gw.rest("GET", dev_path(dev)).json
            self.assertIs(rec["connected"], True, rec)
            self.assertIsNotNone(rec["lastSeen"], rec)
        finally:
            c.close()
        ok = wait_until(lambda: self.gw.rest("GET", dev_path(dev)).json["connected"] is False, 3.0, 0.05)
        self.assertTrue(ok, "device still shown connected after it closed its connection")


if __name__ == "__main__":
    unittest.main()
