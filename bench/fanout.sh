#!/usr/bin/env bash
# Group notification fan-out: N devices in one group, then POSTS notifications to the group over REST.
#
#   bench/fanout.sh                      # uses build/release/warden; N = 100000
#   FANOUT_N=10000 POSTS=5 bench/fanout.sh
#
# Starts a fresh warden on 127.0.0.1 (ports picked by the OS), creates N devices in group `fleet` over REST, then
# sends POSTS notifications of SIZE bytes to `POST /v1/groups/fleet/notifications` one after another. warden
# answers 202 once the one transaction that queues the notification for every member has committed (the payload is
# stored once; each member gets a queue entry), so the POST's duration is the fan-out's. Prints, per POST, its
# duration and the member count warden reports, then checks the first and last device's queueDepth, warden's
# `warden_queued_messages` gauge and its RSS, and stops warden by pid.
#
# Tunables (env, defaults in brackets): FANOUT_N [100000], POSTS [3], SIZE [256], KEEP=1 (keep the temp dir).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
FANOUT_N=${FANOUT_N:-100000}
POSTS=${POSTS:-3}
SIZE=${SIZE:-256}


bench_need "$WARDEN_BIN"
bench_tmp warden-fanout

warden_start "$tmp" "tls_listen =" "max_connections = 10000"

started=$(date +%s.%N)
"$PYTHON" "$here/make-devices.py" --http-port "$http_port" --token-file "$tmp/admin.password" --count "$FANOUT_N" \
  --prefix fan --group fleet "$tmp/devices.txt" || die "cannot create $FANOUT_N devices"
log "created $FANOUT_N devices in group fleet in $(echo "$(date +%s.%N) - $started" | bc) s"

rss() { awk '/VmRSS/{print $2}' "/proc/$warden_pid/status"; }
rss_before=$(rss)
"$PYTHON" - "$http_port" "$tmp/admin.password" "$FANOUT_N" "$POSTS" "$SIZE" <<'EOF' || die "fan-out failed"
import http.client, json, sys, time
port, token_file, n, posts, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
token = open(token_file).read().strip()
h = {"Authorization": "Bearer " + token}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
for i in range(posts):
    body = b"x" * size
    t0 = time.monotonic()
    c.request("POST", "/v1/groups/fleet/notifications?ttl=3600", body=body,
              headers=dict(h, **{"Content-Type": "application/octet-stream"}))
    r = c.getresponse()
    answer = r.read()
    ms = (time.monotonic() - t0) * 1000
    if r.status != 202:
        sys.exit("POST %d gave %d: %s" % (i + 1, r.status, answer[:300]))
    print("fan-out %d: 202 in %.1f ms, %s" % (i + 1, ms, answer.decode()[:200]))
for dev in ("fan-1", "fan-%d" % n):
    c.request("GET", "/v1/devices/" + dev, headers=h)
    r = c.getresponse()
    d = json.loads(r.read())
    print("%s: queueDepth %s" % (dev, d.get("queueDepth")))
    if d.get("queueDepth") != posts:
        sys.exit("%s holds %s notifications, expected %d" % (dev, d.get("queueDepth"), posts))
c.request("GET", "/metrics", headers=h)
for line in c.getresponse().read().decode().splitlines():
    if line.startswith("warden_queued_messages ") or line.startswith("warden_store_commit_seconds_bucket{le=\"1\"}") \
            or line.startswith("warden_store_commit_seconds_count"):
        print(line)
EOF
log "warden RSS $(( rss_before / 1024 )) MB before the fan-outs, $(( $(rss) / 1024 )) MB after"
