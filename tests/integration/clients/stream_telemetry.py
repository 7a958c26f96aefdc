#!/usr/bin/python3
"""Load: streams telemetry as one device, as fast as credit and --in-flight allow, for
--seconds (or --count messages). Prints one JSON line at the end:
  {"sent": n, "accepted": n, "other": n, "condition": <connection/link error or null>}"""

import argparse
import json
import sys
import time

from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container


class Stream(MessagingHandler):
    def __init__(self, a):
        super().__init__(prefetch=0, auto_accept=False)
        self.a = a
        self.sent = self.accepted = self.other = 0
        self.condition = None
        self.deadline = None
        self.sender = None
        self.body = b"\x5a" * a.size

    def on_start(self, event):
        self.deadline = time.monotonic() + self.a.seconds
        conn = event.container.connect(self.a.url, user=self.a.user, password=self.a.password,
                                       allowed_mechs="PLAIN", allow_insecure_mechs=True, reconnect=False)
        self.sender = event.container.create_sender(conn, "telemetry")
        event.container.schedule(self.a.seconds + 5, self)

    def done(self):
        return time.monotonic() >= self.deadline or (self.a.count and self.sent >= self.a.count)

    def on_timer_task(self, event):
        self.finish()

    def on_sendable(self, event):
        s = event.sender
        while s.credit > 0 and self.sent - self.accepted - self.other < self.a.in_flight and not self.done():
            s.send(Message(body=self.body, inferred=True, id="load-%d" % self.sent))
            self.sent += 1

    def on_accepted(self, event):
        self.accepted += 1
        self._settled(event)

    def on_rejected(self, event):
        self.other += 1
        self._settled(event)

    on_released = on_rejected
    on_modified = on_rejected

    def _settled(self, event):
        if self.done():
            if self.accepted + self.other >= self.sent:
                self.finish()
        else:
            self.on_sendable(event)

    def on_link_error(self, event):
        c = event.link.remote_condition
        self.condition = c and c.name
        self.finish()

    def on_connection_error(self, event):
        c = event.connection.remote_condition
        self.condition = c and c.name
        self.finish()

    def on_transport_error(self, event):
        c = event.transport.condition
        self.condition = c and c.name
        self.finish()

    def finish(self):
        if getattr(self, "_finished", False):
            return
        self._finished = True
        sys.stdout.write(json.dumps({"sent": self.sent, "accepted": self.accepted, "other": self.other,
                                     "condition": self.condition}) + "\n")
        sys.stdout.flush()
        self.container.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    h = Stream(a)
    c = Container(h)
    h.container = c
    c.run()


if __name__ == "__main__":
    main()
