#!/usr/bin/python3
"""Gateway RSS per connection that has not logged in: N connections that send the SASL header and read the
mechanisms (plain), or finish a TLS handshake and send nothing more (tls), held open together.

    bench/preauth.py plain|tls [N]        # N defaults to 3000; WARDEN_BIN defaults to build/release/warden

Starts its own warden (through the integration tests' harness: 127.0.0.1, ports the OS picks, a temporary data
directory) with no per-address limit and a SASL deadline of 300 s, warms it with 200 connections, then prints
the RSS growth per held connection. Stops the warden by pid. Needs Debian's python3 (python3-qpid-proton).
"""
import os
import resource
import socket
import ssl
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("WARDEN_BIN", os.path.join(REPO, "build", "release", "warden"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from limits_helpers import SASL_HEADER  # noqa: E402
from warden_harness import Gateway  # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    if mode not in ("plain", "tls"):
        sys.exit(__doc__)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gw = Gateway()
    gw.config["amqp"].update({"max_connections_per_address": 1000000, "max_connections": 1000000,
                              "sasl_timeout": 300})
    gw.start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

        def connect():
            if mode == "plain":
                s = socket.create_connection(("127.0.0.1", gw.ports["amqp"]))
                s.sendall(SASL_HEADER)
                s.recv(4096)
                return s
            return ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.ports["amqps"])),
                                   server_hostname="localhost")

        for s in [connect() for _ in range(200)]:
            s.close()
        time.sleep(1.5)  # warden trims what the warm-up freed
        before = rss_kib(gw.proc.pid)
        held = [connect() for _ in range(n)]
        time.sleep(2)
        after = rss_kib(gw.proc.pid)
        print("%s: %d connections that have not logged in: RSS +%.1f KiB each (%d -> %d KiB)"
              % (mode, n, (after - before) / n, before, after))
        for s in held:
            s.close()
    finally:
        gw.terminate()


if __name__ == "__main__":
    main()
