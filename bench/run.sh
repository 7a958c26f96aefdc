#!/usr/bin/env bash
# Runs warden's telemetry and command benchmarks against a throw-away warden on 127.0.0.1.
#
#   bench/run.sh                      # uses build/release/warden and build/release/bench/warden-bench
#   WARDEN_BIN=... BENCH_BIN=... bench/run.sh
#
# Builds nothing. Starts warden on a temp data dir (ports picked by the OS), creates 100 devices over REST,
# runs ingest with 1, 10 and 100 connections, then drains everything ingested, then the commands scenario
# (1 service + CMD_DEVICES devices: unpaced enqueue rate, then latency at a paced CMD_RATE), then the rest scenario
# (REST POSTs of commands to REST_DEVICES devices: unpaced 202 rate, then latency at a paced REST_RATE), and prints
# a table.
# Tunables (env): MSGS_1, MSGS_10, MSGS_100 (messages per ingest run), SIZE (payload bytes, 256),
# WINDOW_1, WINDOW_10, WINDOW_100 (per-connection windows), DRAIN_WINDOW (500), TIMEOUT (s per run, 120),
# BENCH_THREADS (proactor threads in warden-bench, 1), KEEP=1 (keep the temp dir and warden's log),
# SCENARIOS ("ingest commands"; "ingest" includes the drain), CMD_DEVICES (10), CMD_MSGS (100000),
# CMD_WINDOW (500, unsettled commands at the service), CMD_RATE (1000 commands/s), CMD_DURATION (10 s),
# CMD_SIZE (SIZE), CMD_QUEUE_LIMIT (100000; the command devices' queueLimit, set over REST first),
# REST_DEVICES (10), REST_MSGS (20000), REST_CONCURRENCY (32, requests in flight), REST_RATE (1000 requests/s),
# REST_DURATION (10 s), REST_SIZE (SIZE), REST_QUEUE_LIMIT (CMD_QUEUE_LIMIT).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
SIZE=${SIZE:-256}
MSGS_1=${MSGS_1:-400000}
MSGS_10=${MSGS_10:-1000000}
MSGS_100=${MSGS_100:-800000}
WINDOW_1=${WINDOW_1:-100}
WINDOW_10=${WINDOW_10:-100}
WINDOW_100=${WINDOW_100:-20}
DRAIN_WINDOW=${DRAIN_WINDOW:-500}
TIMEOUT=${TIMEOUT:-120}
BENCH_THREADS=${BENCH_THREADS:-1}
SCENARIOS=${SCENARIOS:-ingest commands rest}
CMD_DEVICES=${CMD_DEVICES:-10}
CMD_MSGS=${CMD_MSGS:-100000}
CMD_WINDOW=${CMD_WINDOW:-500}
CMD_RATE=${CMD_RATE:-1000}
CMD_DURATION=${CMD_DURATION:-10}
CMD_SIZE=${CMD_SIZE:-$SIZE}
CMD_QUEUE_LIMIT=${CMD_QUEUE_LIMIT:-100000}
REST_DEVICES=${REST_DEVICES:-10}
REST_MSGS=${REST_MSGS:-20000}
REST_CONCURRENCY=${REST_CONCURRENCY:-32}
REST_RATE=${REST_RATE:-1000}
REST_DURATION=${REST_DURATION:-10}
REST_SIZE=${REST_SIZE:-$SIZE}
REST_QUEUE_LIMIT=${REST_QUEUE_LIMIT:-$CMD_QUEUE_LIMIT}
N_DEVICES=100
if (( CMD_DEVICES < 1 || CMD_DEVICES > N_DEVICES )); then
  echo "run.sh: CMD_DEVICES must be 1..$N_DEVICES" >&2; exit 2
fi
if (( REST_DEVICES < 1 || REST_DEVICES > N_DEVICES )); then
  echo "run.sh: REST_DEVICES must be 1..$N_DEVICES" >&2; exit 2
fi

bench_need "$WARDEN_BIN" "$BENCH_BIN"
command -v curl >/dev/null || { echo "run.sh: curl is required" >&2; exit 2; }

bench_tmp warden-bench

warden_start "$tmp" "tls_listen =" "max_connections = 10000"
token=$(cat "$tmp/admin.password")
echo "run.sh: warden pid $warden_pid, amqp 127.0.0.1:$amqp_port, http 127.0.0.1:$http_port, data $tmp/data" >&2

# ---- devices
devices="$tmp/devices.txt"
: >"$devices"
for i in $(seq 1 $N_DEVICES); do
  id="bench-$i"
  code=$(curl -sS --max-time 10 -o "$tmp/put.json" -w '%{http_code}' -X PUT \
              -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
              --data '{}' "http://127.0.0.1:$http_port/v1/devices/$id") || code="curl-failed"
  if [[ $code != 201 ]]; then
    echo "run.sh: PUT /v1/devices/$id gave $code: $(cat "$tmp/put.json" 2>/dev/null)" >&2; exit 1
  fi
  key=$(sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$tmp/put.json" | sed 's#\\/#/#g')
  [[ -n $key ]] || { echo "run.sh: no key in the answer for $id: $(cat "$tmp/put.json")" >&2; exit 1; }
  printf '%s %s\n' "$id" "$key" >>"$devices"
done
rm -f "$tmp/put.json"
echo "run.sh: created $N_DEVICES devices" >&2

# ---- runs
results="$tmp/results.jsonl"
: >"$results"
failed=0

run_bench() {   # label, then warden-bench arguments
  local label=$1; shift
  echo "run.sh: [$label] warden-bench $*" >&2
  local out rc
  out=$("$BENCH_BIN" "$@" --host 127.0.0.1 --port "$amqp_port" --timeout "$TIMEOUT" --threads "$BENCH_THREADS")
  rc=$?
  if [[ -n $out ]]; then printf '%s\n' "$out" >>"$results"; fi
  if (( rc != 0 )); then
    echo "run.sh: [$label] warden-bench exited $rc" >&2; failed=1
  fi
  if ! kill -0 "$warden_pid" 2>/dev/null; then
    echo "run.sh: warden (pid $warden_pid) is gone after [$label]; last log lines:" >&2
    tail -n 30 "$tmp/warden.log" >&2
    warden_pid=""
    exit 1
  fi
}

wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

set_queue_limit() {   # limit, number of devices: PUT {"queueLimit": limit} on bench-1 ... bench-N
  local limit=$1 n=$2 i id code
  for i in $(seq 1 "$n"); do
    id="bench-$i"
    code=$(curl -sS --max-time 10 -o "$tmp/put.json" -w '%{http_code}' -X PUT \
                -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
                --data "{\"queueLimit\": $limit}" "http://127.0.0.1:$http_port/v1/devices/$id") || code="curl-failed"
    if [[ $code != 200 ]]; then
      echo "run.sh: PUT /v1/devices/$id (queueLimit) gave $code: $(cat "$tmp/put.json" 2>/dev/null)" >&2; exit 1
    fi
  done
  rm -f "$tmp/put.json"
  echo "run.sh: queueLimit $limit on bench-1 ... bench-$n" >&2
}

if wants ingest; then
  run_bench "ingest x1"   ingest --devices "$devices" --connections 1   --window "$WINDOW_1"   --size "$SIZE" --messages "$MSGS_1"
  run_bench "ingest x10"  ingest --devices "$devices" --connections 10  --window "$WINDOW_10"  --size "$SIZE" --messages "$MSGS_10"
  run_bench "ingest x100" ingest --devices "$devices" --connections 100 --window "$WINDOW_100" --size "$SIZE" --messages "$MSGS_100"

  ingested=$("$PYTHON" -c '
import json, sys
print(sum(json.loads(l)["completed"] for l in open(sys.argv[1]) if l.strip() and json.loads(l)["scenario"] == "ingest"))
' "$results")
  if (( ingested > 0 )); then
    run_bench "drain" drain --user admin --password-file "$tmp/admin.password" --group "bench-$$" \
              --window "$DRAIN_WINDOW" --messages "$ingested"
  else
    echo "run.sh: nothing was ingested; skipping drain" >&2; failed=1
  fi
fi

if wants commands; then
  # The default queue limit (50 per device) would reject much of an unpaced run: raise it for the devices used.
  set_queue_limit "$CMD_QUEUE_LIMIT" "$CMD_DEVICES"
  cmd_args=(--devices "$devices" --connections "$CMD_DEVICES" --user admin --password-file "$tmp/admin.password"
            --size "$CMD_SIZE")
  run_bench "commands rate" commands "${cmd_args[@]}" --window "$CMD_WINDOW" --messages "$CMD_MSGS"
  # Paced: the window only has to cover rate x latency; the default leaves ample room.
  run_bench "commands ${CMD_RATE}/s" commands "${cmd_args[@]}" --window "$CMD_WINDOW" --rate "$CMD_RATE" \
            --duration "$CMD_DURATION"
fi

if wants rest; then
  # Same reason as for commands: C requests in flight over a few devices outrun the default limit of 50.
  set_queue_limit "$REST_QUEUE_LIMIT" "$REST_DEVICES"
  rest_args=(--http-port "$http_port" --token-file "$tmp/admin.password" --devices "$devices"
             --connections "$REST_DEVICES" --size "$REST_SIZE" --concurrency "$REST_CONCURRENCY")
  run_bench "rest rate" rest "${rest_args[@]}" --messages "$REST_MSGS"
  # Paced: the concurrency only has to cover rate x 202 latency; the default leaves ample room.
  run_bench "rest ${REST_RATE}/s" rest "${rest_args[@]}" --rate "$REST_RATE" --duration "$REST_DURATION"
fi

# ---- table
"$PYTHON" - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
hdr = ("scenario", "conns", "window", "size", "messages", "done", "seconds", "msg/s", "p50 ms", "p99 ms",
       "p99.9 ms", "max gap ms", "errors")
print("%-8s %5s %6s %5s %9s %9s %8s %9s %8s %8s %9s %10s %6s" % hdr)
for r in rows:
    print("%-8s %5d %6d %5s %9d %9d %8s %9s %8s %8s %9s %10s %6d%s" % (
        r["scenario"], r["connections"], r["window"], f(r["size"], "d"), r["messages"], r["completed"],
        f(r["seconds"], ".2f"), f(r["rate"], ".0f"), f(r["p50_ms"], ".2f"), f(r["p99_ms"], ".2f"),
        f(r["p999_ms"], ".2f"), f(r["max_gap_ms"], ".1f"), r["errors"],
        "  TIMED OUT" if r["timed_out"] else ""))
cmds = [r for r in rows if r["scenario"] == "commands"]
if cmds:
    print()
    print("commands: 1 service connection -> N device connections; 'accepted/s' = enqueue rate (settled accepted),")
    print("'device' latencies = send -> receipt by the device; 'accept' = send -> accepted at the service")
    hdr = ("mode", "devices", "window", "done", "accepted/s", "received/s", "accept p50", "accept p99",
           "device p50", "device p99", "device p99.9", "max lag ms", "errors")
    print("%-12s %7s %6s %7s %10s %10s %10s %10s %10s %10s %12s %10s %6s" % hdr)
    for r in cmds:
        mode = "unpaced" if r["target_rate"] is None else "%.0f/s x %ds" % (r["target_rate"], r["duration"])
        print("%-12s %7d %6d %7d %10s %10s %10s %10s %10s %10s %12s %10s %6d%s" % (
            mode, r["connections"], r["window"], r["completed"], f(r["rate"], ".0f"), f(r["delivered_rate"], ".0f"),
            f(r["accept_p50_ms"], ".2f"), f(r["accept_p99_ms"], ".2f"), f(r["p50_ms"], ".2f"), f(r["p99_ms"], ".2f"),
            f(r["p999_ms"], ".2f"), f(r["max_send_lag_ms"], ".1f"), r["errors"],
            "  TIMED OUT" if r["timed_out"] else ""))
        bad = {k: r[k] for k in ("rejected", "missing", "duplicates", "out_of_order", "misrouted", "malformed")
               if r.get(k)}
        if bad:
            print("             errors: " + ", ".join("%s %d" % kv for kv in bad.items()))
rest = [r for r in rows if r["scenario"] == "rest"]
if rest:
    print()
    print("rest: POST /v1/devices/<id>/commands (HTTP/1.1 keep-alive, 'conc' requests in flight) -> N device")
    print("connections; '202/s' = rate of 202 answers, '202' latencies = send -> 202 read, 'device' = send -> receipt")
    hdr = ("mode", "devices", "conc", "http conns", "done", "202/s", "received/s", "202 p50", "202 p99", "202 p99.9",
           "device p50", "device p99", "device p99.9", "max lag ms", "errors")
    print("%-12s %7s %4s %10s %6s %7s %10s %8s %8s %9s %10s %10s %12s %10s %6s" % hdr)
    for r in rest:
        mode = "unpaced" if r["target_rate"] is None else "%.0f/s x %ds" % (r["target_rate"], r["duration"])
        print("%-12s %7d %4d %10d %6d %7s %10s %8s %8s %9s %10s %10s %12s %10s %6d%s" % (
            mode, r["connections"], r["concurrency"], r["http_connections"], r["completed"], f(r["rate"], ".0f"),
            f(r["delivered_rate"], ".0f"), f(r["accept_p50_ms"], ".2f"), f(r["accept_p99_ms"], ".2f"),
            f(r["accept_p999_ms"], ".2f"), f(r["p50_ms"], ".2f"), f(r["p99_ms"], ".2f"), f(r["p999_ms"], ".2f"),
            f(r["max_send_lag_ms"], ".1f"), r["errors"], "  TIMED OUT" if r["timed_out"] else ""))
        bad = {k: r[k] for k in ("http_errors", "unanswered", "missing", "duplicates", "out_of_order", "misrouted",
                                 "malformed") if r.get(k)}
        if bad:
            print("             errors: " + ", ".join("%s %d" % kv for kv in bad.items()) +
                  ("; HTTP status " + ", ".join("%s x%d" % kv for kv in r["http_status"].items())
                   if r.get("http_status") else ""))
EOF

warnings=$(grep -c -E 'WARN|ERROR|error|warning' "$tmp/warden.log" || true)
if (( warnings > 0 )); then
  echo "run.sh: warden logged $warnings warning/error lines; first ones:" >&2
  grep -E 'WARN|ERROR|error|warning' "$tmp/warden.log" | head -n 10 >&2
fi
exit $failed
