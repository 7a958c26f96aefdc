#!/usr/bin/env python3
"""Creates devices PREFIX-1 ... PREFIX-N on a warden over REST and writes `id base64key` lines for warden-bench.

    bench/make-devices.py --http-port H --token-file F --count N [--prefix bench] [--group G] [--host 127.0.0.1] OUT

One keep-alive HTTP/1.1 connection, one `PUT /v1/devices/<id>` (body `{}`, or `{"groups": [G]}`) per device; every answer must be
201 with a `key`. A device that already exists (200, no key) is an error: its key is not shown again.
Only talks to the host given (127.0.0.1 by default)."""

import argparse
import http.client
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--first", type=int, default=1, help="number of the first device (1)")
    ap.add_argument("--group", help="make every device a member of this group")
    ap.add_argument("out")
    a = ap.parse_args()
    with open(a.token_file) as f:
        token = f.readline().strip()
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    put_body = json.dumps({"groups": [a.group]}).encode() if a.group else b"{}"
    conn = http.client.HTTPConnection(a.host, a.http_port, timeout=30)
    with open(a.out, "w") as out:
        for i in range(a.first, a.first + a.count):
            dev = "%s-%d" % (a.prefix, i)
            for attempt in range(2):  # one retry on a dropped keep-alive connection
                try:
                    conn.request("PUT", "/v1/devices/" + dev, body=put_body, headers=headers)
                    r = conn.getresponse()
                    body = r.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection(a.host, a.http_port, timeout=30)
                    if attempt:
                        raise
            if r.status != 201:
                print("make-devices: PUT /v1/devices/%s gave %d: %s" % (dev, r.status, body[:200]), file=sys.stderr)
                return 1
            key = json.loads(body).get("key")
            if not key:
                print("make-devices: no key in the answer for %s: %s" % (dev, body[:200]), file=sys.stderr)
                return 1
            out.write("%s %s\n" % (dev, key))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
