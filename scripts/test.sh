#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests against real redis-server
# processes and the real gateway binary, the config checks, and the benches compiled and run
# once each as tests. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
export PATH="$PWD/target/tools/bin:$PATH"
start=$(date +%s)
cargo test --locked --all-targets
echo "test suite finished in $(( $(date +%s) - start ))s"
