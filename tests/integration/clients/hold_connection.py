#!/usr/bin/python3
"""Holds one AMQP connection open as a device and reports, as JSON lines on stdout, when
the gateway ends it. Used to time revocation from another process.

  {"event": "ready", "t": <monotonic>}            after one telemetry message was accepted
  {"event": "closed", "t": ..., "condition": ..., "description": ...}   peer closed the connection
  {"event": "link_closed", "t": ..., "condition": ...}                   peer detached our link
  {"event": "transport_closed", "t": ..., "condition": ...}              socket gone without close
  {"event": "timeout", "t": ...}                                         --max-seconds passed

time.monotonic() is CLOCK_MONOTONIC, comparable across processes on one host.
"""

import argparse
import json
import sys
import time

from proton import Message, SSLDomain
from proton.handlers import MessagingHandler
from proton.reactor import Container


def emit(**kw):
    kw.setdefault("wall", time.time())
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def cond(c):
    return (c.name, c.description) if c is not None else (None, None)


class Hold(MessagingHandler):
    def __init__(self, a):
        super().__init__(prefetch=0, auto_accept=False)
        self.a = a
        self.sent = False
        self.done = False
        self.conn = None

    def on_start(self, event):
        kw = dict(user=self.a.user, password=self.a.password, allowed_mechs="PLAIN",
                  allow_insecure_mechs=True, reconnect=False)
        if self.a.ca:
            d = SSLDomain(SSLDomain.MODE_CLIENT)
            d.set_trusted_ca_db(self.a.ca)
            d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
            kw["ssl_domain"] = d
        self.conn = event.container.connect(self.a.url, **kw)
        event.container.create_sender(self.conn, self.a.address)
        event.container.schedule(self.a.max_seconds, self)

    def on_timer_task(self, event):
        if not self.done:
            self.finish("timeout")

    def finish(self, what, **kw):
        if self.done:
            return
        self.done = True
        emit(event=what, **kw)
        if self.conn is not None:
            self.conn.close()
        # stop the container so the process ends even if the peer is gone
        self.container.stop()

    def on_sendable(self, event):
        if not self.sent:
            self.sent = True
            event.sender.send(Message(body=b"hold", inferred=True))

    def on_accepted(self, event):
        emit(event="ready", t=time.monotonic())

    def on_rejected(self, event):
        emit(event="rejected", t=time.monotonic())

    def on_link_remote_close(self, event):
        t = time.monotonic()
        name, desc = cond(event.link.remote_condition)
        emit(event="link_closed", t=t, condition=name, description=desc)
        if event.link.state & event.link.LOCAL_ACTIVE:
            event.link.close()

    def on_connection_remote_close(self, event):
        t = time.monotonic()
        name, desc = cond(event.connection.remote_condition)
        self.finish("closed", t=t, condition=name, description=desc)

    def on_transport_closed(self, event):
        t = time.monotonic()
        name, desc = cond(event.transport.condition)
        self.finish("transport_closed", t=t, condition=name, description=desc)

    on_transport_error = on_transport_closed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--ca")
    p.add_argument("--address", default="telemetry")
    p.add_argument("--max-seconds", type=float, default=30.0)
    a = p.parse_args()
    h = Hold(a)
    c = Container(h)
    h.container = c
    try:
        c.run()
    except KeyboardInterrupt:
        pass
    if not h.done:
        emit(event="ended", t=time.monotonic())


if __name__ == "__main__":
    main()
