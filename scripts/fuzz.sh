#!/usr/bin/env bash
# Fuzzes config parsing and key extraction with cargo fuzz (libFuzzer), each for a bounded
# time: scripts/fuzz.sh [SECONDS per target, default 60]. Installs cargo-fuzz when missing.
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
for target in config key; do
  echo "fuzzing $target for ${seconds}s" >&2
  cargo fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096
done
