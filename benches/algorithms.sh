#!/usr/bin/env bash
# Redis memory and CPU per check for each algorithm at limits 100, 10,000 and 100,000, with the
# window full: the check script (lua/, assembled as src/limiter/backend/redis.rs does) is
# called on one key by redis-benchmark at about twice the key's limit, so the window fills
# and stays full, half the calls recording and half refused, entries leaving as they expire.
# The window is limit / 25 ms (4 ms, 400 ms, 4 s), so the offered rate (tens of thousands of
# calls a second) is always over the limit.
#
#   benches/algorithms.sh            # prints a markdown table
#
# Per cell: MEMORY USAGE of the key at the end (bytes, every element sampled) and INFO
# commandstats usec_per_call of EVALSHA over 200,000 calls once the window is full. Redis runs
# alone on loopback; the numbers are Redis's own time, not the network's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

cli() { redis-cli -p "$PORT" "$@"; }
SCRIPT=$(cat lua/typed.lua lua/sliding_log.lua lua/gcra.lua lua/sliding_window.lua lua/check.lua)
SHA=$(cli SCRIPT LOAD "$SCRIPT")
CALLS=${CALLS:-200000}

echo "| algorithm | limit | window | Redis memory per key | Redis µs per check |"
echo "|---|---:|---:|---:|---:|"
for alg in 1:sliding_log 2:gcra 3:sliding_window; do
  id=${alg%%:*}; name=${alg#*:}
  for limit in 100 10000 100000; do
    window=$(( limit / 25 ))
    key="ratelimit:bench-$name-$limit"
    args=(EVALSHA "$SHA" 1 "$key" 1 "m__rand_int__" "$id" "$limit" "$window" 0)
    # Fill the window (and then some), then measure with it full.
    redis-benchmark -p "$PORT" -c 8 -n $(( 3 * limit + 20000 )) -r 1000000000 -q "${args[@]}" >/dev/null 2>&1
    cli CONFIG RESETSTAT >/dev/null
    redis-benchmark -p "$PORT" -c 8 -n "$CALLS" -r 1000000000 -q "${args[@]}" >/dev/null 2>&1
    usec=$(cli INFO commandstats | awk -F'[=,]' '/^cmdstat_evalsha:/ { for (i = 1; i < NF; i++) if ($i == "usec_per_call") print $(i + 1) }')
    mem=$(cli MEMORY USAGE "$key" SAMPLES 0)
    printf '| %s | %d | %d ms | %s B | %s |\n' "$name" "$limit" "$window" "${mem:-0}" "$usec"
    cli DEL "$key" >/dev/null
  done
done
echo
echo "redis-benchmark -c 8, $CALLS calls per cell after the window is full; $(redis-server --version | awk '{print $3}')."
