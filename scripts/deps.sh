#!/usr/bin/env bash
# Installs what building and testing need on Debian, when missing: a C toolchain and cmake
# (pingora builds zlib-ng and zstd from C); for tests also redis-server (the tests start real
# ones: standalone, TLS, a cluster and sentinels; redis-cli comes with it), openssl (the TLS
# tests make their own CA and certificates, and s_server is an HTTPS upstream), curl (HTTP/2
# to the HTTPS listener), prometheus (promtool checks /metrics; a real
# Prometheus runs the monitor's queries), nginx (the yardstick for a graceful stop) and
# faketime (calendar quotas are tested at their boundaries, on a gateway whose clock says so),
# chromium and its driver (the status page is tested in a real headless browser), dpkg-dev
# and systemd (the Debian package is built with dpkg-shlibdeps, its unit checked by
# systemd-analyze; systemd is not started); then
# Flask and Express, the framework upstreams.
# Usage: scripts/deps.sh [build|test]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."

want=(cmake)
command -v cc >/dev/null 2>&1 || want+=(build-essential)
[ "${1:-test}" = test ] && want+=(redis-server openssl curl prometheus nginx faketime chromium chromium-driver dpkg-dev systemd)

missing=()
for pkg in "${want[@]}"; do
  case "$pkg" in
    redis-server) command -v redis-server >/dev/null 2>&1 || missing+=("$pkg") ;;
    prometheus) { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=("$pkg") ;;
    nginx) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=("$pkg") ;;
    build-essential) missing+=("$pkg") ;;
    chromium) [ -x /usr/bin/chromium ] || missing+=("$pkg") ;;
    dpkg-dev) command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=("$pkg") ;;
    systemd) command -v systemd-analyze >/dev/null 2>&1 || missing+=("$pkg") ;;
    chromium-driver) [ -x /usr/bin/chromedriver ] || missing+=("$pkg") ;;
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

# Python tools for the tests, in a virtualenv under target/tools so no system Python is
# touched: schemathesis (PyPI) drives the admin API from its OpenAPI document, and Flask is a
# real framework upstream (tests/frameworks/flask_app.py).
if [ "${1:-test}" = test ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -x target/tools/bin/python ]; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    python3 -m venv target/tools
  fi
  { [ -x target/tools/bin/st ] || command -v st >/dev/null 2>&1; } || target/tools/bin/pip install --quiet schemathesis
  target/tools/bin/python -c 'import flask' 2>/dev/null || target/tools/bin/pip install --quiet 'flask>=3,<4'
  # grpcio: a real gRPC client for the gRPC-native answers (tests/grpc/call.py).
  target/tools/bin/python -c 'import grpc' 2>/dev/null || target/tools/bin/pip install --quiet 'grpcio>=1.60'
  # selenium: drives the system chromium through its chromedriver for the status page's test
  # (tests/status/drive.py); given both paths, it downloads nothing.
  target/tools/bin/python -c 'import selenium' 2>/dev/null || target/tools/bin/pip install --quiet 'selenium>=4.10'
  # Express 4 on node is the other framework upstream (tests/frameworks/express_app.js).
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  if [ ! -f target/tools/node/node_modules/express/package.json ]; then
    mkdir -p target/tools/node
    npm install --silent --no-audit --no-fund --prefix target/tools/node 'express@4' >/dev/null
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (1.83 or newer) first, e.g. with rustup" >&2
  exit 1
fi
