#!/usr/bin/env bash
# Builds warden and runs every test: unit and integration, first in the dev
# build, then again under AddressSanitizer and UndefinedBehaviorSanitizer, the
# threaded parts under ThreadSanitizer;
# then builds the libFuzzer targets (tests/fuzz), replays their seeds and
# fuzzes each for a bounded time (WARDEN_FUZZ_SECONDS, default 20).
# Usage: tests/run.sh [dev|asan|tsan|fuzz ...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."

presets=("${@:-dev asan tsan fuzz}")
# shellcheck disable=SC2206
presets=(${presets[*]})
cpus=$(nproc 2>/dev/null || echo 2)

# Fuzzes one target; leaves $work/$t.log, and $work/$t.ok when nothing was found.
fuzz_one() {
  local t=$1 secs=$2 bin=$3 work=$4
  rm -rf "${work:?}/$t" "$work/$t.ok"
  mkdir -p "$work/$t/corpus"
  local opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
              -artifact_prefix="$work/$t/")
  [ -f "tests/fuzz/$t.dict" ] && opts+=(-dict="tests/fuzz/$t.dict")
  if "$bin/$t" "${opts[@]}" "$work/$t/corpus" "tests/fuzz/corpus/$t" >"$work/$t.log" 2>&1; then
    touch "$work/$t.ok"
  fi
}

# Fuzzes every target for WARDEN_FUZZ_SECONDS, one per CPU at a time, starting
# from its seeds in tests/fuzz/corpus; what it finds, and the inputs it adds,
# stay under build/fuzz/fuzz-work. Fails if any target crashes, leaks, hangs or
# breaks one of the promises its harness checks.
fuzz() {
  local secs=${WARDEN_FUZZ_SECONDS:-20} bin=build/fuzz/tests/fuzz work=build/fuzz/fuzz-work
  local failed=() t log
  mkdir -p "$work"
  echo "=== fuzz: build"
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j"$cpus"
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  echo "=== fuzz: seeds"
  ctest --preset fuzz
  echo "=== fuzz: ${secs}s per target, $cpus at a time"
  # Every target tests/fuzz/CMakeLists.txt registers (each has a seed test of its name).
  local targets
  mapfile -t targets < <(ctest --preset fuzz -N | sed -n 's/^ *Test *#[0-9]*: *//p')
  for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$cpus" ]; do wait -n || true; done
    fuzz_one "$t" "$secs" "$bin" "$work" &
  done
  wait
  for t in "${targets[@]}"; do
    log=$work/$t.log
    if [ -f "$work/$t.ok" ]; then
      echo "$t: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") executions, nothing found"
    else
      failed+=("$t")
      echo "$t: FAILED after $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") executions:"
      grep -v '^\[0x' "$log" | tail -n 60
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${failed[*]} failed; inputs and logs under $work (replay one: $bin/<target> <file>)"
    return 1
  fi
}

for preset in "${presets[@]}"; do
  if [ "$preset" = fuzz ]; then
    continue # after the other presets
  fi
  echo "=== $preset: build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$cpus"
  echo "=== $preset: test"
  if [ "$preset" = asan ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    export WARDEN_IT_CYCLES=10 # the 50 kill -9 cycles run in dev; 10 here keep the suite short
  fi
  # tsan: the unit tests and the suites that exercise the threads (the harness fails on any report).
  # The integration suites mostly wait on sockets and timers, so they run
  # two per CPU (each on its own ports and data directory).
  ctest --preset "$preset" --parallel $((cpus * 2 > 8 ? 8 : cpus * 2))
done

for preset in "${presets[@]}"; do
  if [ "$preset" = fuzz ]; then
    fuzz
  fi
done
