#!/usr/bin/env bash
# Installs what building and testing need on Debian, when missing: a C toolchain and cmake
# (pingora builds zlib-ng and zstd from C); for tests also redis-server (the tests start real
# ones: standalone, TLS, a cluster and sentinels; redis-cli comes with it), openssl (the TLS
# tests make their own CA and certificates, and s_server is an HTTPS upstream), curl (HTTP/2
# to the HTTPS listener) and prometheus (promtool checks /metrics; a real
# Prometheus runs the monitor's queries).
# Usage: scripts/deps.sh [build|test]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."

want=(cmake)
command -v cc >/dev/null 2>&1 || want+=(build-essential)
[ "${1:-test}" = test ] && want+=(redis-server openssl curl prometheus)

missing=()
for pkg in "${want[@]}"; do
  case "$pkg" in
    redis-server) command -v redis-server >/dev/null 2>&1 || missing+=("$pkg") ;;
    prometheus) { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=("$pkg") ;;
    build-essential) missing+=("$pkg") ;;
    *) command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# schemathesis (PyPI) drives the admin API from its OpenAPI document in the tests; it goes
# into a virtualenv under target/tools so no system Python is touched.
if [ "${1:-test}" = test ] && ! command -v st >/dev/null 2>&1 && [ ! -x target/tools/bin/st ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  python3 -m venv target/tools
  target/tools/bin/pip install --quiet schemathesis
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (1.83 or newer) first, e.g. with rustup" >&2
  exit 1
fi
