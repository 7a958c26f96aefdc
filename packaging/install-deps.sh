#!/usr/bin/env bash
# Installs everything warden needs to build, run and test, from Debian 12's
# packages and the npm registry. Idempotent: installs only what is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config openssl
  libqpid-proton11-dev libssl-dev liblmdb-dev lmdb-utils libmicrohttpd-dev
  libcmocka-dev zlib1g-dev libjansson-dev libinih-dev libjwt-dev libcurl4-openssl-dev
  python3-qpid-proton curl procps
  clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# rhea is the independent JavaScript AMQP 1.0 client used by the integration tests.
here="$(cd "$(dirname "$0")/.." && pwd)"
if command -v npm >/dev/null 2>&1 && [ ! -d "$here/tests/integration/node_modules/rhea" ]; then
  (cd "$here/tests/integration" && npm install --no-audit --no-fund --silent) || \
    echo "warning: npm install rhea failed; rhea tests will be skipped" >&2
fi
