#!/usr/bin/env bash
# Builds warden and runs every test: unit and integration, first in the dev
# build, then again under AddressSanitizer and UndefinedBehaviorSanitizer.
# Usage: tests/run.sh [dev|asan]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

presets=("${@:-dev asan}")
# shellcheck disable=SC2206
presets=(${presets[*]})
jobs=$(nproc 2>/dev/null || echo 2)

for preset in "${presets[@]}"; do
  echo "=== $preset: build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j"$jobs"
  echo "=== $preset: test"
  if [ "$preset" = asan ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  fi
  ctest --preset "$preset"
done
