#!/usr/bin/env bash
# Compares warden with RabbitMQ (AMQP 1.0 plugin) and the Qpid Proton C example broker, all on 127.0.0.1.
#
#   bench/compare.sh                 # uses build/release/warden and build/release/bench/warden-bench
#   ROUNDS=5 SERVERS="warden rabbitmq" bench/compare.sh
#
# Installs what is missing with apt-get (rabbitmq-server, libqpid-proton11-dev-examples, gnuplot-nox; needs root),
# starts the three servers on loopback ports picked at random, runs ingest (CONNS x WINDOW unsettled, SIZE bytes,
# durable where the server supports it), drain, e2e unpaced, e2e paced at E2E_RATE, e2e paced at E2E_FAST_RATE
# (the servers in E2E_FAST_SERVERS) and the round trip with one message in flight (RTT_MSGS messages) against each,
# the servers alternating between rounds; warden alone also gets REST command -> device at REST_RATE; then
# `connections` (CONN_N idle connections, RSS per connection). Writes bench/results/<date>.json and
# bench/results/<date>.png and renders docs/BENCHMARKS.md (bench/report.py). Stops every server it started by pid.
#
# Tunables (env, defaults in brackets): SERVERS ["warden rabbitmq proton"], ROUNDS [3], CONNS [10], WINDOW [100],
# SIZE [256], DRAIN_WINDOW [500], MSGS_WARDEN [600000], MSGS_RABBITMQ [200000], MSGS_PROTON [1500000] (messages
# per ingest/drain/e2e run; sized for several seconds per run on 2 vCPUs), E2E_RATE [5000] msg/s and E2E_DURATION
# [10] s for the paced e2e (a rate every server sustains: its latency is the servers', not a backlog's),
# E2E_FAST_RATE [100000] msg/s for E2E_DURATION s on E2E_FAST_SERVERS ["warden proton"] (issue #6's e2e target;
# RabbitMQ would only queue a backlog), RTT_MSGS [3000], REST_RATE [1000] commands/s for REST_DURATION [10] s,
# TIMEOUT [300] s per run, CONN_N [1000]
# (0 = skip connections), CONNECT_CONCURRENCY [16], BENCH_THREADS [1], WAIT_CTEST [1] (first wait until no
# `ctest` process runs, polling every 30 s, at most 25 min), INSTALL [1], PROTON_BROKER_PATCH [1] (see below),
# RESULTS_DIR [bench/results], DOC [docs/BENCHMARKS.md; empty = do not write], KEEP=1 (keep the temp dir and logs).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
SERVERS=${SERVERS:-warden rabbitmq proton}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-10}
WINDOW=${WINDOW:-100}
SIZE=${SIZE:-256}
DRAIN_WINDOW=${DRAIN_WINDOW:-500}
MSGS_WARDEN=${MSGS_WARDEN:-600000}
MSGS_RABBITMQ=${MSGS_RABBITMQ:-200000}
MSGS_PROTON=${MSGS_PROTON:-1500000}
E2E_RATE=${E2E_RATE:-5000}
E2E_DURATION=${E2E_DURATION:-10}
E2E_FAST_RATE=${E2E_FAST_RATE:-100000}
E2E_FAST_SERVERS=${E2E_FAST_SERVERS:-warden proton}
RTT_MSGS=${RTT_MSGS:-3000}
REST_RATE=${REST_RATE:-1000}
REST_DURATION=${REST_DURATION:-10}
TIMEOUT=${TIMEOUT:-300}
CONN_N=${CONN_N:-1000}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-16}
BENCH_THREADS=${BENCH_THREADS:-1}
WAIT_CTEST=${WAIT_CTEST:-1}
INSTALL=${INSTALL:-1}
PROTON_BROKER_PATCH=${PROTON_BROKER_PATCH:-1}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
DOC=${DOC-$repo/docs/BENCHMARKS.md}

bench_need "$WARDEN_BIN" "$BENCH_BIN"
(( SIZE >= 40 )) || die "SIZE must be at least 40 (e2e's payload header)"
command -v "$PYTHON" >/dev/null || die "$PYTHON is required"
for s in $SERVERS; do
  case $s in warden|rabbitmq|proton) ;; *) die "unknown server '$s' in SERVERS (warden, rabbitmq, proton)";; esac
done
wants_server() { [[ " $SERVERS " == *" $1 "* ]]; }

# ---- packages (Debian's)
need=()
wants_server rabbitmq && ! dpkg -s rabbitmq-server >/dev/null 2>&1 && need+=(rabbitmq-server)
wants_server proton && ! dpkg -s libqpid-proton11-dev-examples >/dev/null 2>&1 && need+=(libqpid-proton11-dev-examples)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if (( ${#need[@]} )); then
  (( INSTALL )) || die "missing packages: ${need[*]} (INSTALL=0)"
  (( EUID == 0 )) || die "missing packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}"
  # The rabbitmq-server package starts the system service (all interfaces, port 5672) unless policy-rc.d says
  # no; with none in place, add one for the install only.
  tmp_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$tmp_policy" && chmod 755 "$tmp_policy"
  fi
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
  rc=$?
  [[ -n $tmp_policy ]] && rm -f "$tmp_policy"
  (( rc == 0 )) || die "apt-get install ${need[*]} failed"
fi
command -v gnuplot >/dev/null || log "no gnuplot: no plot"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/warden-compare.XXXXXX")
warden_pid="" rabbit_pid="" rabbit_beam_pid="" epmd_pid="" proton_pid=""

# shellcheck disable=SC2317  # called from the EXIT trap
stop_pid() {   # pid, name, seconds to wait after SIGTERM
  local pid=$1 name=$2 wait_s=$3
  if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 $((wait_s * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop within $wait_s s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  local rc=$?
  stop_pid "$warden_pid" warden 10
  stop_pid "$proton_pid" "Proton broker" 5
  # rabbitmq-server (the script) stops the Erlang VM on SIGTERM and waits for it
  stop_pid "$rabbit_pid" "rabbitmq-server" 30
  if [[ -z $rabbit_beam_pid && -s $tmp/rabbit/pid ]]; then rabbit_beam_pid=$(tr -dc 0-9 <"$tmp/rabbit/pid"); fi
  stop_pid "$rabbit_beam_pid" "RabbitMQ's Erlang VM" 10
  stop_pid "$epmd_pid" epmd 5
  if [[ -n ${KEEP:-} ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until a TCP connect to 127.0.0.1:$1 succeeds, for at most $2 seconds.
wait_port() {
  local port=$1 secs=$2
  for _ in $(seq 1 $((secs * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---- wait for a CI dry run (ctest) to finish before loading the machine
(( WAIT_CTEST )) && bench_wait_for_ctest

# ---- warden
start_warden() {
  warden_start "$tmp/warden" "tls_listen =" "max_connections = 10000"
  warden_port=$amqp_port warden_http=$http_port
  local ndev=$(( CONN_N > CONNS ? CONN_N : CONNS ))
  "$PYTHON" "$here/make-devices.py" --http-port "$warden_http" --token-file "$tmp/warden/admin.password" \
    --count "$ndev" "$tmp/warden/devices.txt" || die "cannot create warden devices"
  log "warden pid $warden_pid, amqp 127.0.0.1:$warden_port, $ndev devices"
}

# ---- RabbitMQ: a private node (own name, dirs, cookie, epmd) on loopback only
start_rabbitmq() {
  local d=$tmp/rabbit
  mkdir -p "$d/mnesia" "$d/log" "$d/home"
  rabbit_port=$(free_port); local dist_port epmd_port
  dist_port=$(free_port); epmd_port=$(free_port)
  echo '[rabbitmq_amqp1_0].' >"$d/enabled_plugins"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$rabbit_port
loopback_users.guest = true
log.file.level = warning
log.console = false
EOF
  # epmd of our own on loopback (an Erlang node would otherwise start a shared one on all interfaces)
  epmd -address 127.0.0.1 -port "$epmd_port" >"$d/log/epmd.log" 2>&1 &
  epmd_pid=$!
  wait_port "$epmd_port" 10 || die "epmd did not start"
  (
    export HOME=$d/home ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$epmd_port
    export RABBITMQ_NODENAME="warden-compare-$$@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$rabbit_port RABBITMQ_DIST_PORT=$dist_port
    export RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_PID_FILE=$d/pid
    export RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
    export RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    exec /usr/lib/rabbitmq/bin/rabbitmq-server
  ) >"$d/log/stdout.log" 2>&1 &
  rabbit_pid=$!
  # Ready when an AMQP 1.0 client gets in (the port opens after the plugins have started)
  local ok=""
  for _ in $(seq 1 120); do
    kill -0 "$rabbit_pid" 2>/dev/null || { tail -n 30 "$d/log/stdout.log" >&2; die "RabbitMQ exited early"; }
    if "$BENCH_BIN" connections --host 127.0.0.1 --port "$rabbit_port" --user guest --password guest \
         --connections 1 --settle 0 --timeout 5 >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
  done
  [[ -n $ok ]] || { tail -n 30 "$d/log/stdout.log" >&2; die "RabbitMQ did not accept an AMQP 1.0 connection in 2 min"; }
  [[ -s $d/pid ]] && rabbit_beam_pid=$(tr -dc 0-9 <"$d/pid")
  log "RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server) pid $rabbit_pid (VM $rabbit_beam_pid), amqp 127.0.0.1:$rabbit_port"
}

# ---- Qpid Proton C example broker (in memory)
start_proton() {
  local d=$tmp/proton src
  mkdir -p "$d"
  src=$(dpkg -L libqpid-proton11-dev-examples | grep '/examples/c/broker\.c$' | head -n1)
  [[ -n $src ]] || die "broker.c not found in libqpid-proton11-dev-examples"
  cp "$src" "$(dirname "$src")/thread.h" "$d/"
  proton_patched=false
  if (( PROTON_BROKER_PATCH )); then
    # The example pops a queue with memmove(): O(queue length) per message, so draining a queue of a million
    # messages takes minutes. Make the pop O(1) with a head index (nothing else changes).
    if "$PYTHON" - "$d/broker.c" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
subs = [
    ("  size_t sent;                     /* Count of messages sent, used as delivery tag */\n",
     "  size_t sent;                     /* Count of messages sent, used as delivery tag */\n"
     "  size_t head;                     /* warden compare.sh: index of the first message (O(1) pop) */\n"),
    ("  q->sent = 0;\n", "  q->sent = 0;\n  q->head = 0;\n"),
    ("  for (i = 0; i < q->messages.len; ++i)\n    free(q->messages.data[i].start);",
     "  for (i = q->head; i < q->messages.len; ++i)\n    free(q->messages.data[i].start);"),
    ("  if (q->messages.len == 0) { /* Empty, record connection as waiting */",
     "  if (q->messages.len == q->head) { /* Empty, record connection as waiting */"),
    ("    m = q->messages.data[0];\n    VEC_POP(q->messages);\n",
     "    m = q->messages.data[q->head++];\n    if (q->head == q->messages.len) q->messages.len = q->head = 0;\n"),
    ("  if (q->messages.len == 1) { /* Was empty, notify waiting connections */",
     "  if (q->messages.len - q->head == 1) { /* Was empty, notify waiting connections */"),
]
for old, new in subs:
    if s.count(old) != 1:
        sys.exit("patch does not apply: %r" % old[:60])
    s = s.replace(old, new)
open(p, "w").write(s)
EOF
    then proton_patched=true
    else log "could not patch broker.c (a different version?); compiling it as shipped"; cp "$src" "$d/broker.c"
    fi
  fi
  gcc -O2 -o "$d/broker" "$d/broker.c" -lqpid-proton -lpthread 2>"$d/gcc.log" || { cat "$d/gcc.log" >&2; die "cannot compile broker.c"; }
  # No ssl-certs/ in its working directory: it says it cannot set up TLS and serves plain AMQP only
  (cd "$d" && exec ./broker 127.0.0.1 0) >"$d/broker.log" 2>&1 &
  proton_pid=$!
  proton_port=""
  for _ in $(seq 1 100); do
    proton_port=$(sed -n 's/^listening on \([0-9][0-9]*\).*/\1/p' "$d/broker.log" | head -n1)
    [[ -n $proton_port ]] && break
    kill -0 "$proton_pid" 2>/dev/null || { cat "$d/broker.log" >&2; die "the Proton broker exited early"; }
    sleep 0.1
  done
  [[ -n $proton_port ]] || die "the Proton broker did not report its port"
  log "Proton C example broker (patched pop: $proton_patched) pid $proton_pid, amqp 127.0.0.1:$proton_port"
}

wants_server warden && start_warden
wants_server rabbitmq && start_rabbitmq
wants_server proton && start_proton

# ---- runs
results=$tmp/runs.jsonl
: >"$results"
failed=0

server_alive() {
  case $1 in
    warden) kill -0 "$warden_pid" 2>/dev/null ;;
    rabbitmq) kill -0 "$rabbit_pid" 2>/dev/null ;;
    proton) kill -0 "$proton_pid" 2>/dev/null ;;
  esac
}

run() {   # server, round, label, then warden-bench arguments
  local server=$1 round=$2 label=$3; shift 3
  log "[$server round $round $label] warden-bench $*"
  # Write back what earlier runs (any server's) left dirty first, so that it does not land in this run's fsyncs
  sync
  local out rc
  out=$("$BENCH_BIN" "$@" --host 127.0.0.1 --timeout "$TIMEOUT" --threads "$BENCH_THREADS")
  rc=$?
  if [[ -n $out ]]; then
    printf '%s\n' "$out" | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        r = json.loads(line)
        r = dict(server=sys.argv[1], round=int(sys.argv[2]), label=sys.argv[3], exit_status=int(sys.argv[4]), **r)
        print(json.dumps(r))' "$server" "$round" "$label" "$rc" >>"$results"
  fi
  (( rc == 0 )) || { log "[$server round $round $label] warden-bench exited $rc"; failed=1; }
  server_alive "$server" || die "$server is gone after [$label]"
}

args_for() {   # server, role (send | recv | both): connection arguments
  case $1 in
    warden)
      case $2 in
        send) echo "--port $warden_port --devices $tmp/warden/devices.txt" ;;
        recv) echo "--port $warden_port --user admin --password-file $tmp/warden/admin.password --group compare" ;;
        both) echo "--port $warden_port --devices $tmp/warden/devices.txt --user admin --password-file $tmp/warden/admin.password --group compare" ;;
      esac ;;
    rabbitmq) echo "--port $rabbit_port --user guest --password guest --address /queue/warden-compare --durable-terminus" ;;
    proton) echo "--port $proton_port --sasl-anonymous --address warden-compare" ;;
  esac
}

msgs_for() {
  case $1 in warden) echo "$MSGS_WARDEN" ;; rabbitmq) echo "$MSGS_RABBITMQ" ;; proton) echo "$MSGS_PROTON" ;; esac
}

read -r -a order <<<"$SERVERS"
n=${#order[@]}
for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    s=${order[$(( (k + round - 1) % n ))]}   # each round starts with the next server
    m=$(msgs_for "$s")
    # shellcheck disable=SC2046
    run "$s" "$round" ingest ingest $(args_for "$s" send) --connections "$CONNS" --window "$WINDOW" --size "$SIZE" --messages "$m"
    # shellcheck disable=SC2046
    run "$s" "$round" drain drain $(args_for "$s" recv) --window "$DRAIN_WINDOW" --messages "$m"
    # shellcheck disable=SC2046
    run "$s" "$round" e2e e2e $(args_for "$s" both) --connections "$CONNS" --window "$WINDOW" --size "$SIZE" \
        --drain-window "$DRAIN_WINDOW" --messages "$m"
    # shellcheck disable=SC2046
    run "$s" "$round" e2e-paced e2e $(args_for "$s" both) --connections "$CONNS" --window "$WINDOW" --size "$SIZE" \
        --drain-window "$DRAIN_WINDOW" --rate "$E2E_RATE" --duration "$E2E_DURATION"
    if [[ " $E2E_FAST_SERVERS " == *" $s "* ]]; then
      # shellcheck disable=SC2046
      run "$s" "$round" e2e-fast e2e $(args_for "$s" both) --connections "$CONNS" --window "$WINDOW" --size "$SIZE" \
          --drain-window "$DRAIN_WINDOW" --rate "$E2E_FAST_RATE" --duration "$E2E_DURATION"
    fi
    # shellcheck disable=SC2046
    run "$s" "$round" rtt ingest $(args_for "$s" send) --connections 1 --window 1 --size "$SIZE" --messages "$RTT_MSGS"
    if [[ $s == warden ]]; then
      run warden "$round" rest-paced rest --port "$warden_port" --http-port "$warden_http" \
          --token-file "$tmp/warden/admin.password" --devices "$tmp/warden/devices.txt" --connections "$CONNS" \
          --size "$SIZE" --concurrency 32 --rate "$REST_RATE" --duration "$REST_DURATION"
    fi
  done
done

# ---- idle connections: RSS per connection (connection + session, no link, plain TCP)
if (( CONN_N > 0 )); then
  for s in "${order[@]}"; do
    case $s in
      warden) pid=$warden_pid; cargs="--port $warden_port --devices $tmp/warden/devices.txt" ;;
      rabbitmq) pid=$rabbit_beam_pid; cargs="--port $rabbit_port --user guest --password guest" ;;
      proton) pid=$proton_pid; cargs="--port $proton_port --sasl-anonymous" ;;
    esac
    # shellcheck disable=SC2086
    run "$s" 1 connections connections $cargs --connections "$CONN_N" --no-link \
        --connect-concurrency "$CONNECT_CONCURRENCY" ${pid:+--pid $pid}
  done
fi

# ---- results
mkdir -p "$RESULTS_DIR"
stamp=$(date -u +%Y-%m-%d)
base=$RESULTS_DIR/$stamp
[[ -e $base.json ]] && base=$RESULTS_DIR/$stamp-$(date -u +%H%M%S)
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$repo" status --porcelain 2>/dev/null) ]] && rev="$rev+dirty"
ROUNDS=$ROUNDS CONNS=$CONNS WINDOW=$WINDOW SIZE=$SIZE DRAIN_WINDOW=$DRAIN_WINDOW CONN_N=$CONN_N \
CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY E2E_RATE=$E2E_RATE E2E_DURATION=$E2E_DURATION E2E_FAST_RATE=$E2E_FAST_RATE \
RTT_MSGS=$RTT_MSGS REST_RATE=$REST_RATE REST_DURATION=$REST_DURATION MSGS_WARDEN=$MSGS_WARDEN MSGS_RABBITMQ=$MSGS_RABBITMQ MSGS_PROTON=$MSGS_PROTON \
PROTON_PATCHED=${proton_patched:-false} WARDEN_REV=$rev \
RABBITMQ_VERSION=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null) \
ERLANG_VERSION=$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null) \
PROTON_VERSION=$(dpkg-query -W -f '${Version}' libqpid-proton11 2>/dev/null) \
"$PYTHON" "$here/report.py" summarize "$results" "$base.json" || die "cannot write $base.json"
log "wrote $base.json"
if command -v gnuplot >/dev/null; then
  "$PYTHON" "$here/report.py" plot "$base.json" "$base.png" && log "wrote $base.png"
fi
if [[ -n $DOC ]]; then
  "$PYTHON" "$here/report.py" doc "$base.json" "$DOC" && log "wrote $DOC"
fi
"$PYTHON" "$here/report.py" table "$base.json"

for s in "${order[@]}"; do
  case $s in
    warden) f=$tmp/warden/warden.log ;;
    rabbitmq) f=$tmp/rabbit/log/stdout.log ;;
    proton) f=$tmp/proton/broker.log ;;
  esac
  c=$(grep -c -E 'WARN|ERROR|[Ee]rror|warning' "$f" 2>/dev/null || true)
  (( c > 0 )) && { log "$s logged $c warning/error lines; first ones:"; grep -E 'WARN|ERROR|[Ee]rror|warning' "$f" | head -n 5 >&2; }
done
exit $failed
