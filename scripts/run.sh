#!/usr/bin/env bash
# Builds and runs the gateway with conf/example.toml: the embedded store and a direct
# response, so it is a working demo with nothing else running. Extra arguments replace the
# config: scripts/run.sh -c my.toml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-c conf/example.toml)
exec cargo run --locked --release --quiet -- "${args[@]}"
