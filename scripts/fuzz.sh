#!/usr/bin/env bash
# Fuzzes config parsing, key extraction and path normalization with cargo fuzz (libFuzzer),
# each for a bounded time: scripts/fuzz.sh [SECONDS per target, default 60]. Installs
# cargo-fuzz when missing.
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. A crash leaves its input under fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/deps.sh build
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/config
cp conf/*.toml tests/fixtures/bad/*.toml fuzz/corpus/config/ 2>/dev/null || true
# The path bypasses, as seeds: encoded slashes and dots, backslashes, bad escapes, NUL,
# dot segments with parameters.
mkdir -p fuzz/corpus/path
i=0
for seed in '/api/items/..%2F..%2Fhealthz' '/api/items/..%5C..%5Chealthz' '/a\..\b' \
  '/api/%2e%2E/login' '//login/./' '/%6Cogin' '/100%' '/a%zz' '/login%00.png' '/caf%C3%A9' \
  '/a%252Fb' '/LOGIN;x' '/x/../../../etc' '/api/..;/login' '/a/%2e;x/b' '/a/..%3B/b'; do
  printf '%s' "$seed" > "fuzz/corpus/path/seed-$i"; i=$((i + 1))
done
for target in config key path; do
  echo "fuzzing $target for ${seconds}s" >&2
  cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096
done
