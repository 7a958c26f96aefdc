# shellcheck shell=bash
# Sourced first by every bench script: the binaries it runs, its messages, and a throw-away warden on 127.0.0.1.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WARDEN_BIN=${WARDEN_BIN:-$repo/build/release/warden}
BENCH_BIN=${BENCH_BIN:-$repo/build/release/bench/warden-bench}
PYTHON=${PYTHON:-python3}

log() { echo "${0##*/}: $*" >&2; }
die() { log "$*"; exit 1; }

# bench_need BIN...: each must be built.
bench_need() {
  local bin
  for bin in "$@"; do
    [[ -x $bin ]] || die "$bin is missing; build first: cmake --preset release && cmake --build build/release -j2"
  done
}

# bench_wait_for_ctest: a test run loads the machine; wait until no ctest process runs (at most 25 min).
bench_wait_for_ctest() {
  local i
  for i in $(seq 0 50); do
    pgrep -x ctest >/dev/null || return 0
    (( i == 50 )) && die "ctest still running after 25 minutes; not benchmarking (WAIT_CTEST=0 to skip the check)"
    (( i == 0 )) && log "a ctest process is running; waiting for it to finish (polling every 30 s, at most 25 min)"
    sleep 30
  done
}

# warden_start DIR [AMQP_LINE...]
# Writes DIR/warden.ini (store in DIR/data, plain AMQP and REST on ports the OS picks, no device rate limit,
# dev_mode) with each AMQP_LINE added to [amqp] (default: no TLS listener), starts warden with its log in
# DIR/warden.log, waits up to 20 s for its listeners and admin token, then sets warden_pid, amqp_port, http_port
# and amqps_port (when a TLS listener was asked for) and writes the admin token to DIR/admin.password.
warden_start() {
  local d=$1
  shift
  local amqp_lines=("$@")
  (( ${#amqp_lines[@]} )) || amqp_lines=("tls_listen =")
  mkdir -p "$d"
  {
    printf '[store]\npath = %s\nmax_size = 8G\n[amqp]\ndevice_rate = 0\nlisten = 127.0.0.1:0\n' "$d/data"
    printf '%s\n' "${amqp_lines[@]}"
    printf '[http]\nlisten = 127.0.0.1:0\n[auth]\ndev_mode = true\n'
  } >"$d/warden.ini"
  "$WARDEN_BIN" serve --config "$d/warden.ini" 2>"$d/warden.log" >/dev/null &
  warden_pid=$!
  local tls=0
  grep -q '^tls_listen = 127\.0\.0\.1:' "$d/warden.ini" && tls=1
  amqp_port="" amqps_port="" http_port=""
  for _ in $(seq 1 200); do
    amqp_port=$(sed -n 's/.*listening amqp 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$d/warden.log" | head -n1)
    amqps_port=$(sed -n 's/.*listening amqps 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$d/warden.log" | head -n1)
    http_port=$(sed -n 's/.*listening http 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$d/warden.log" | head -n1)
    [[ -n $amqp_port && -n $http_port && ( $tls == 0 || -n $amqps_port ) && -s $d/data/admin.token ]] && break
    kill -0 "$warden_pid" 2>/dev/null || { cat "$d/warden.log" >&2; die "warden exited early"; }
    sleep 0.1
  done
  [[ -n $amqp_port && -n $http_port && ( $tls == 0 || -n $amqps_port ) && -s $d/data/admin.token ]] ||
    { cat "$d/warden.log" >&2; die "warden did not report its listeners within 20 s"; }
  head -n1 "$d/data/admin.token" | tr -d '\r\n' >"$d/admin.password"
  chmod 600 "$d/admin.password"
}

# warden_stop: SIGTERM to warden_pid, SIGKILL if it has not stopped 10 s later.
warden_stop() {
  if [[ -z ${warden_pid:-} ]] || ! kill -0 "$warden_pid" 2>/dev/null; then warden_pid=""; return 0; fi
  kill -TERM "$warden_pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$warden_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$warden_pid" 2>/dev/null; then
    echo "warden (pid $warden_pid) did not stop within 10 s of SIGTERM; killing it" >&2
    kill -KILL "$warden_pid" 2>/dev/null
  fi
  wait "$warden_pid" 2>/dev/null
  warden_pid=""
}

# bench_tmp NAME: makes the temporary directory $tmp; on exit, warden_stop, then $tmp is removed (kept with KEEP=1).
bench_tmp() {
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  warden_pid=""
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317  # called from the EXIT trap
bench_cleanup() {
  local rc=$?
  warden_stop
  if [[ -n ${KEEP:-} ]]; then echo "kept $tmp (warden log: warden.log below it)" >&2; else rm -rf "$tmp"; fi
  exit "$rc"
}
