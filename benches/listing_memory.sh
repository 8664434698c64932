#!/usr/bin/env bash
# Concurrent counter listings against a gateway on Redis with KEYS live counters: the
# gateway's peak resident memory while CLIENTS `GET /api/counters` run at once, and how long
# they took. Listings run one at a time in the gateway; before they did not.
#
# Usage: benches/listing_memory.sh     Env: KEYS (100000), CLIENTS (40), BIN (a release
# binary; default: this tree's, built). Installs redis-server when missing. Results:
# docs/PERFORMANCE.md ("Admin listing").
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-100000}
CLIENTS=${CLIENTS:-40}
if [ -z "${BIN:-}" ]; then
  scripts/deps.sh build
  cargo build --release --locked --quiet
  BIN=$PWD/target/release/ratelimiter
fi
command -v redis-server >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"; $sudo apt-get install -y -qq redis-server >/dev/null; }

OUT=$(mktemp -d)
REDIS_PORT=26398 PROXY=127.0.0.1:18182 ADMIN=127.0.0.1:19192
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
# KEYS sliding-log counters with one entry each, as the gateway writes them.
redis-cli -p $REDIS_PORT eval "
  local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
  for i = 1, tonumber(ARGV[1]) do
    local k = 'ratelimit:ip:10.' .. math.floor(i / 65536) .. '.' .. math.floor(i / 256) % 256 .. '.' .. i % 256
    redis.call('ZADD', k, now, 'm' .. i); redis.call('PEXPIRE', k, 600000)
  end
  return 1" 0 "$KEYS" >/dev/null

cat > "$OUT/gw.toml" <<EOF
[proxy]
listen = "$PROXY"
[proxy.direct_response]
body = "ok"
[admin]
listen = "$ADMIN"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
[limits]
default_window_ms = 600000
EOF
"$BIN" -c "$OUT/gw.toml" 2>"$OUT/gw.log" &
GW=$!
until curl -s -o /dev/null "http://$ADMIN/health"; do sleep 0.1; done
rss() { awk '/VmRSS/ { print $2 }' "/proc/$GW/status"; }
before=$(rss)
start=$(date +%s.%N)
for _ in $(seq "$CLIENTS"); do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 120 "http://$ADMIN/api/counters" >>"$OUT/codes" &
done
peak=$before
while [ "$(jobs -rp | grep -cv "^$GW$")" -gt 0 ]; do
  now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.05
done
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
after=$(rss)
printf 'keys %s, %s listings at once: RSS %s MB before, %s MB peak, %s MB after; all done in %.1f s; statuses: %s\n' \
  "$KEYS" "$CLIENTS" "$((before / 1024))" "$((peak / 1024))" "$((after / 1024))" "$took" \
  "$(sort "$OUT/codes" | uniq -c | awk '{ printf "%s×%s ", $1, $2 }')"
