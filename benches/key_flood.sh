#!/usr/bin/env bash
# A flood of random keys through one gateway on Redis, beside one key hammered past its
# limit: how many checks time out at each redis.timeout_ms, how many of those come while the
# gateway's threads are still connecting to Redis (the first second), and how many requests
# of the hammered key get through. With on_error = "allow", a check that times out lets its
# request through unrecorded, so the hammered key can pass its limit by the number of its own
# checks that timed out; "deny" answers those 503 instead.
#
# Usage: benches/key_flood.sh [TIMEOUT_MS...]   (default: 50 100 250)
# Env: DURATION (s, default 20), CONNS (flood connections, default 128), THREADS (gateway
# worker threads, default 2), ON_ERROR (allow).
# Installs wrk and redis-server when missing; builds the release binary. Prints one row per
# timeout. Results: docs/PERFORMANCE.md ("A flood of keys").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --quiet
BIN=$PWD/target/release/ratelimiter
DURATION=${DURATION:-20}
CONNS=${CONNS:-128}
ON_ERROR=${ON_ERROR:-allow}
TIMEOUTS=("$@")
[ ${#TIMEOUTS[@]} -gt 0 ] || TIMEOUTS=(50 100 250)

OUT=$(mktemp -d)
REDIS_PORT=26399 PROXY=127.0.0.1:18181 ADMIN=127.0.0.1:19191
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" >/dev/null
GW=""
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null || true
  kill "$(cat "$OUT/redis.pid")" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
until redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do sleep 0.1; done

cat > "$OUT/random.lua" <<'EOF'
-- A new X-Api-Key per request.
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["X-Api-Key"] = "flood-" .. math.random(1, 1000000000) .. "-" .. n })
end
EOF

metric() { # metric NAME_WITH_LABELS: its value in /metrics, 0 when absent
  curl -s "http://$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { v += $NF } END { print v + 0 }'
}

printf '| timeout_ms | flood req/s | checks timed out | of them in the first second | hammered key let through (limit 20) | flood p99 |\n'
printf '|---|---|---|---|---|---|\n'
for t in "${TIMEOUTS[@]}"; do
  redis-cli -p $REDIS_PORT flushall >/dev/null
  cat > "$OUT/gw.toml" <<EOF
[server]
threads = ${THREADS:-2}
[proxy]
listen = "$PROXY"
[proxy.direct_response]
body = "ok"
[admin]
listen = "$ADMIN"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
timeout_ms = $t
on_error = "$ON_ERROR"
[limits]
default_limit = 20
default_window_ms = 60000
key = "header:X-Api-Key"
[metrics]
max_key_labels = 10
EOF
  "$BIN" -c "$OUT/gw.toml" 2>"$OUT/gw.log" &
  GW=$!
  until curl -s -o /dev/null "http://$ADMIN/health"; do sleep 0.1; done
  # The flood and the hammer start together, on a gateway whose threads have not yet
  # connected to Redis.
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/random.lua" "http://$PROXY/" >"$OUT/flood.txt" 2>&1 &
  FLOOD=$!
  wrk -t1 -c4 -d"${DURATION}s" -H 'X-Api-Key: hammer' "http://$PROXY/" >"$OUT/hammer.txt" 2>&1 &
  HAMMER=$!
  sleep 1
  first=$(metric 'ratelimiter_store_errors_total{kind="timeout"')
  wait $FLOOD $HAMMER
  total=$(metric 'ratelimiter_store_errors_total{kind="timeout"')
  rps=$(awk '/Requests\/sec/ { printf "%d", $2 }' "$OUT/flood.txt")
  p99=$(awk '$1 == "99%" { print $2 }' "$OUT/flood.txt")
  sent=$(awk '/requests in/ { print $1 }' "$OUT/hammer.txt")
  refused=$(awk '/Non-2xx/ { print $5 }' "$OUT/hammer.txt")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$rps" "$total" "$first" "$((sent - ${refused:-0}))" "$p99"
  kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""
done
