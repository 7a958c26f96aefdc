#!/usr/bin/env bash
# Idle device connections against warden: time to connect N, warden's RSS per connection, plain and TLS, with and
# without TLS session resumption.
#
#   bench/connections.sh                  # uses build/release/warden and build/release/bench/warden-bench
#   CONN_NS="1000 10000" bench/connections.sh
#
# For each N in CONN_NS and each mode in MODES, starts a fresh warden on 127.0.0.1 (ports picked by the OS,
# dev_mode: a generated EC P-256 development certificate for TLS), creates N devices over REST, then runs
# `warden-bench connections --reconnect` with --pid <warden> (N device connections: SASL PLAIN with a SAS token, open,
# a session and a receiver on `commands`; all N connect, CONNECT_CONCURRENCY at once, then each is closed and
# reconnected, 3 at a time), and stops warden by pid. Modes: plain, tls (no resumption), tls-resume (a Proton TLS
# session id per connection, so each reconnect offers the session its connection had), tls-cert (each device
# presents its own client certificate and logs in with SASL EXTERNAL; needs python3-cryptography; not in the default
# MODES; skipped above 10 000 connections, where the client's own memory runs out first).
# Writes bench/results/<date>-connections.json and, if a bench/compare.sh result is there, re-renders
# docs/BENCHMARKS.md.
#
# Tunables (env, defaults in brackets): CONN_NS [1000], MODES ["plain tls tls-resume"],
# CONNECT_CONCURRENCY [100] (warden listens with a backlog of 256), SETTLE_MS [2000] (wait before reading RSS),
# TIMEOUT [300] s per run, WAIT_CTEST [1] (wait until no `ctest` process runs, at most 25 min), RESULTS_DIR
# [bench/results], DOC [docs/BENCHMARKS.md; empty = do not write], KEEP=1 (keep the temp dir).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
CONN_NS=${CONN_NS:-1000}
MODES=${MODES:-plain tls tls-resume}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-100}
SETTLE_MS=${SETTLE_MS:-2000}
TIMEOUT=${TIMEOUT:-300}
WAIT_CTEST=${WAIT_CTEST:-1}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
DOC=${DOC-$repo/docs/BENCHMARKS.md}

bench_need "$WARDEN_BIN" "$BENCH_BIN"
for m in $MODES; do
  case $m in plain|tls|tls-resume|tls-cert) ;; *) die "unknown mode '$m' (plain, tls, tls-resume, tls-cert)";; esac
done

# warden (started from here) and warden-bench need a descriptor per connection
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_tmp warden-connections

(( WAIT_CTEST )) && bench_wait_for_ctest

start_warden() {   # dir, number of devices, mode
  local d=$1 ndev=$2 mode=$3 certs=()
  local lines=("max_connections = $((ndev + 100))" "tls_listen = 127.0.0.1:0")
  if [[ $mode == tls-cert ]]; then   # the CA first: warden trusts it from the start
    mkdir -p "$d/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/certs/ca.key" \
      -out "$d/certs/ca.pem" -subj /CN=warden-bench-CA -days 30 -addext basicConstraints=critical,CA:TRUE \
      >/dev/null 2>&1 || die "cannot make a CA with openssl"
    lines+=("tls_ca = $d/certs/ca.pem")
    certs=(--certs "$d/certs")
  fi
  warden_start "$d" "${lines[@]}"
  [[ -s $d/data/tls/dev-cert.pem ]] || die "warden wrote no development certificate"
  "$PYTHON" "$here/make-devices.py" --http-port "$http_port" --token-file "$d/admin.password" --count "$ndev" \
    "${certs[@]}" "$d/devices.txt" || die "cannot create $ndev devices"
}

results=$tmp/runs.jsonl
: >"$results"
failed=0
run=0
for n in $CONN_NS; do
  for mode in $MODES; do
    if [[ $mode == tls-cert ]] && (( n > 10000 )); then
      # warden-bench gives every certificate an OpenSSL context of its own: 19 000 grew the client to 13.6 GB
      log "[$n $mode] skipped: client certificates are measured up to 10 000 connections"
      continue
    fi
    run=$((run + 1))
    d=$tmp/run-$run
    start_warden "$d" "$n" "$mode"
    sleep 1   # let warden settle after the registry writes
    args=(connections --host 127.0.0.1 --devices "$d/devices.txt" --connections "$n" --pid "$warden_pid"
          --connect-concurrency "$CONNECT_CONCURRENCY" --settle "$SETTLE_MS" --timeout "$TIMEOUT" --reconnect)
    case $mode in
      plain) args+=(--port "$amqp_port") ;;
      tls) args+=(--port "$amqps_port" --tls --ca "$d/data/tls/dev-cert.pem") ;;
      tls-resume) args+=(--port "$amqps_port" --tls --ca "$d/data/tls/dev-cert.pem" --resume) ;;
      tls-cert) args+=(--port "$amqps_port" --tls --ca "$d/data/tls/dev-cert.pem" --external) ;;
    esac
    log "[$n $mode] warden pid $warden_pid: warden-bench ${args[*]}"
    out=$("$BENCH_BIN" "${args[@]}")
    rc=$?
    [[ -n $out ]] && printf '%s\n' "$out" >>"$results"
    (( rc == 0 )) || { log "[$n $mode] warden-bench exited $rc"; failed=1; }
    kill -0 "$warden_pid" 2>/dev/null || { tail -n 20 "$d/warden.log" >&2; die "warden is gone after [$n $mode]"; }
    c=$(grep -c -E 'WARN|ERROR' "$d/warden.log" || true)
    (( c > 0 )) && { log "[$n $mode] warden logged $c warning/error lines; first ones:"; grep -E 'WARN|ERROR' "$d/warden.log" | head -n 5 >&2; }
    warden_stop
  done
done

mkdir -p "$RESULTS_DIR"
stamp=$(date -u +%Y-%m-%d)
out=$RESULTS_DIR/$stamp-connections.json
[[ -e $out ]] && out=$RESULTS_DIR/$stamp-$(date -u +%H%M%S)-connections.json
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$repo" status --porcelain 2>/dev/null) ]] && rev="$rev+dirty"
CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY SETTLE_MS=$SETTLE_MS WARDEN_REV=$rev \
PROTON_VERSION=$(dpkg-query -W -f '${Version}' libqpid-proton11 2>/dev/null) \
"$PYTHON" "$here/report.py" connections "$results" "$out" || die "cannot write $out"
log "wrote $out"

"$PYTHON" "$here/report.py" connections-table "$out"

if [[ -n $DOC ]]; then
  latest=""
  for f in "$RESULTS_DIR"/*.json; do
    [[ -e $f && $f != *-connections.json ]] || continue
    [[ -z $latest || $f -nt $latest ]] && latest=$f
  done
  if [[ -n $latest ]]; then
    "$PYTHON" "$here/report.py" doc "$latest" "$DOC" && log "re-rendered $DOC with $(basename "$latest")"
  fi
fi
exit $failed
