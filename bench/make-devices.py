#!/usr/bin/env python3
"""Creates devices PREFIX-1 ... PREFIX-N on a warden over REST and writes `id base64key` lines for warden-bench.

    bench/make-devices.py --http-port H --token-file F --count N [--prefix bench] [--group G] [--host 127.0.0.1]
                          [--certs DIR] OUT

One keep-alive HTTP/1.1 connection, one `PUT /v1/devices/<id>` (body `{}`, or `{"groups": [G]}`) per device; every answer must be
201 with a `key`. A device that already exists (200, no key) is an error: its key is not shown again.
With --certs, each device also gets an X.509 client certificate (EC P-256, all devices sharing one key, DIR/device.key),
issued by the CA in DIR/ca.pem and DIR/ca.key (made there if missing; warden's [amqp] tls_ca) and registered by its SHA-256
thumbprint; the lines are then `id base64key cert.pem device.key`, for warden-bench --external. Needs
python3-cryptography.
Only talks to the host given (127.0.0.1 by default)."""

import argparse
import datetime
import http.client
import json
import os
import sys


class Issuer:
    """A CA and one shared device key; issues a certificate per device (a few per millisecond)."""

    def __init__(self, directory):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self.x509, self.hashes, self.NameOID = x509, hashes, NameOID
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.device_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.not_before, self.not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)
        ca_pem, ca_key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
        if os.path.exists(ca_pem) and os.path.exists(ca_key):  # made before warden started, to be its tls_ca
            with open(ca_key, "rb") as f:
                self.ca_key = serialization.load_pem_private_key(f.read(), None)
            with open(ca_pem, "rb") as f:
                self.ca_name = x509.load_pem_x509_certificate(f.read()).subject
        else:
            self.ca_key = ec.generate_private_key(ec.SECP256R1())
            self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "warden-bench CA")])
            ca = (x509.CertificateBuilder().subject_name(self.ca_name).issuer_name(self.ca_name)
                  .public_key(self.ca_key.public_key()).serial_number(1)
                  .not_valid_before(self.not_before).not_valid_after(self.not_after)
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .sign(self.ca_key, hashes.SHA256()))
            with open(ca_pem, "wb") as f:
                f.write(ca.public_bytes(serialization.Encoding.PEM))
            with open(ca_key, "wb") as f:
                f.write(self.ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        self.key_path = os.path.join(directory, "device.key")
        with open(self.key_path, "wb") as f:
            f.write(self.device_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        self.serial = 1
        self.PEM = serialization.Encoding.PEM

    def issue(self, device_id):
        """Writes DIR/<device_id>.pem; returns (its path, its SHA-256 thumbprint in hex)."""
        x509 = self.x509
        self.serial += 1
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(self.NameOID.COMMON_NAME, device_id)]))
                .issuer_name(self.ca_name).public_key(self.device_key.public_key()).serial_number(self.serial)
                .not_valid_before(self.not_before).not_valid_after(self.not_after)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.ca_key, self.hashes.SHA256()))
        path = os.path.join(self.dir, device_id + ".pem")
        with open(path, "wb") as f:
            f.write(cert.public_bytes(self.PEM))
        return path, cert.fingerprint(self.hashes.SHA256()).hex()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--first", type=int, default=1, help="number of the first device (1)")
    ap.add_argument("--group", help="make every device a member of this group")
    ap.add_argument("--certs", metavar="DIR", help="also a client certificate per device, issued by a CA made in DIR")
    ap.add_argument("out")
    a = ap.parse_args()
    try:
        issuer = Issuer(a.certs) if a.certs else None
    except ImportError:
        print("make-devices: --certs needs python3-cryptography (apt-get install python3-cryptography)", file=sys.stderr)
        return 1
    with open(a.token_file) as f:
        token = f.readline().strip()
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    base = {"groups": [a.group]} if a.group else {}
    conn = http.client.HTTPConnection(a.host, a.http_port, timeout=30)
    with open(a.out, "w") as out:
        for i in range(a.first, a.first + a.count):
            dev = "%s-%d" % (a.prefix, i)
            body = dict(base)
            if issuer:
                cert, thumbprint = issuer.issue(dev)
                body["auth"] = {"key": True, "thumbprint": thumbprint}
            put_body = json.dumps(body).encode()
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
            out.write("%s %s %s %s\n" % (dev, key, cert, issuer.key_path) if issuer else "%s %s\n" % (dev, key))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
