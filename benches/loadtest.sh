#!/usr/bin/env bash
# Load test: the gateway in each mode against its baselines, in one run on this machine.
#
# Starts a static nginx upstream, Redis, nginx as the peer proxy (proxy_pass, and limit_req),
# and the release gateway in each mode; drives each with wrk and with oha at $CONNS
# connections for $DURATION; prints one table of requests/s, p50, p99, p99.9, and the ratio
# to pass-through and to nginx proxy_pass measured in the same run; and reads Redis's command
# statistics for Redis calls per request.
#
#   benches/loadtest.sh                 # defaults: CONNS=64 DURATION=10s THREADS=1
#   CONNS=64 DURATION=20s THREADS=2 benches/loadtest.sh
#
# THREADS is the worker count of both the gateway and nginx, so the comparison is like for
# like. Installs nginx, wrk and redis-server (Debian) and oha (crates.io) when missing.
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
OUT=${OUT:-target/loadtest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- tools -------------------------------------------------------------------------------
scripts/deps.sh test
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install --locked oha
cargo build --release --locked --quiet
GW="$PWD/target/release/ratelimiter"

# --- processes ---------------------------------------------------------------------------
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}

UP=$(free_port); NGX_PROXY=$(free_port); NGX_LIMIT=$(free_port); REDIS=$(free_port)
mkdir -p "$OUT/nginx/logs"
cat > "$OUT/nginx/nginx.conf" <<NGINX
worker_processes $THREADS;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=peer:10m rate=1000000r/s;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:$NGX_PROXY;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$NGX_LIMIT;
    location / {
      limit_req zone=peer burst=1000000 nodelay;
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" & pids+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null & pids+=($!)
wait_port "$UP"; wait_port "$NGX_PROXY"; wait_port "$NGX_LIMIT"; wait_port "$REDIS"

# gateway NAME LIMITS_TOML [REDIS]: starts one gateway; its proxy port is left in $PORT.
gateway() {
  local name=$1 limits=$2 redis=${3:-} port admin
  port=$(free_port); admin=$(free_port)
  {
    # One single-threaded runtime per thread: faster than pingora's work-stealing default
    # for a proxy (docs/PERFORMANCE.md).
    printf '[server]\nthreads = %s\nwork_stealing = false\ngrace_period_seconds = 0\n' "$THREADS"
    printf '[proxy]\nlisten = "127.0.0.1:%s"\nupstreams = ["127.0.0.1:%s"]\n' "$port" "$UP"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[node]\nid = "%s"\n' "$admin" "$name"
    [ -n "$redis" ] && printf '[redis]\nurl = "redis://127.0.0.1:%s"\ntimeout_ms = 1000\n' "$redis"
    printf '[limits]\n%s\n' "$limits"
  } > "$OUT/$name.toml"
  RUST_LOG=warn "$GW" -c "$OUT/$name.toml" >/dev/null 2> "$OUT/$name.log" & pids+=($!)
  wait_port "$port"
  PORT=$port
}

# --- load --------------------------------------------------------------------------------
# wrk with a script that reports p50/p99/p99.9 and, optionally, a new X-Api-Key per request.
cat > "$OUT/report.lua" <<'LUA'
local counter = 0
local unique = os.getenv("UNIQUE_KEYS") == "1"
function setup(thread) thread:set("id", counter); counter = counter + 1 end
function init(args) n = 0 end
function request()
  if unique then
    n = n + 1
    return wrk.format(nil, nil, { ["X-Api-Key"] = id .. "-" .. n })
  end
  return wrk.format()
end
function done(summary, latency, requests)
  local s = summary.duration / 1e6
  io.stderr:write(string.format("RESULT %.0f %.3f %.3f %.3f %d %d\n",
    summary.requests / s, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

# run_wrk PORT... : wrk against one or more ports at once (connections split), prints
# "rps p50 p99 p999 requests" (latencies in ms; several ports: summed rps, worst percentiles).
run_wrk() {
  local n=$# conns=$(( CONNS / $# )) files=()
  for port in "$@"; do
    local f; f=$(mktemp)
    files+=("$f")
    wrk -t1 -c"$conns" -d"$DURATION" -s "$OUT/report.lua" "http://127.0.0.1:$port/" >/dev/null 2>"$f" &
  done
  wait_jobs
  cat "${files[@]}" | awk '/^RESULT/ { rps += $2; if ($3 > p50) p50 = $3; if ($4 > p99) p99 = $4;
    if ($5 > p999) p999 = $5; reqs += $6 } END { printf "%.0f %.2f %.2f %.2f %d\n", rps, p50, p99, p999, reqs }'
  rm -f "${files[@]}"
}

run_oha() {
  local conns=$(( CONNS / $# )) files=()
  for port in "$@"; do
    local f; f=$(mktemp)
    files+=("$f")
    oha --no-tui -c "$conns" -z "$DURATION" --output-format json $OHA_ARGS "http://127.0.0.1:$port/" > "$f" &
  done
  wait_jobs
  for f in "${files[@]}"; do
    jq -r '[.summary.requestsPerSec, .latencyPercentiles.p50 * 1000, .latencyPercentiles.p99 * 1000,
            .latencyPercentiles["p99.9"] * 1000, ([.statusCodeDistribution[]] | add)] | @tsv' "$f"
  done | awk '{ rps += $1; if ($2 > p50) p50 = $2; if ($3 > p99) p99 = $3; if ($4 > p999) p999 = $4;
    reqs += $5 } END { printf "%.0f %.2f %.2f %.2f %d\n", rps, p50, p99, p999, reqs }'
  rm -f "${files[@]}"
}

# Waits for the load generators only (the servers are background jobs too).
wait_jobs() {
  local p
  for p in $(jobs -p); do
    case " ${pids[*]} " in *" $p "*) ;; *) wait "$p" ;; esac
  done
}

redis_calls() { redis-cli -p "$REDIS" info commandstats | awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 }'; }

declare -A RESULT CALLS
# measure LABEL TOOL PORT...: one row
measure() {
  local label=$1 tool=$2; shift 2
  redis-cli -p "$REDIS" config resetstat >/dev/null
  local r; r=$("run_$tool" "$@")
  RESULT["$label/$tool"]=$r
  local calls; calls=$(redis_calls); calls=${calls:-0}
  local reqs; reqs=$(echo "$r" | awk '{ print $5 }')
  CALLS["$label/$tool"]=$(awk -v c="$calls" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.3f", c / r; else print "-" }')
  echo "  $label/$tool: $r (evalsha $calls)" >&2
}

ONE_KEY_OHA="-H X-Api-Key:bench"
echo "load: $CONNS connections, $DURATION per run, $THREADS worker thread(s)" >&2

OHA_ARGS=""
export UNIQUE_KEYS=0
for tool in wrk oha; do measure "1 upstream direct" "$tool" "$UP"; done
for tool in wrk oha; do measure "2a nginx proxy_pass" "$tool" "$NGX_PROXY"; done
for tool in wrk oha; do measure "2b nginx limit_req" "$tool" "$NGX_LIMIT"; done

BY_KEY='default_limit = 1000000000
default_window_ms = 1000
key = "header:X-Api-Key"'

gateway passthrough 'enabled = false'
for tool in wrk oha; do measure "3 gateway pass-through" "$tool" "$PORT"; done

export UNIQUE_KEYS=1
gateway embedded "$BY_KEY"
measure "4 gateway embedded store" wrk "$PORT"
OHA_ARGS=$ONE_KEY_OHA measure "4 gateway embedded store" oha "$PORT"

gateway redis-allowed "$BY_KEY" "$REDIS"
measure "5 gateway redis allowed" wrk "$PORT"
OHA_ARGS=$ONE_KEY_OHA measure "5 gateway redis allowed" oha "$PORT"
UNIQUE_KEYS=0

gateway redis-blocked 'default_limit = 10
default_window_ms = 3600000' "$REDIS"
for tool in wrk oha; do measure "6 gateway redis blocked" "$tool" "$PORT"; done

gateway node-1 "$BY_KEY" "$REDIS"; N1=$PORT
gateway node-2 "$BY_KEY" "$REDIS"; N2=$PORT
gateway node-3 "$BY_KEY" "$REDIS"; N3=$PORT
UNIQUE_KEYS=1 measure "7 three nodes, one redis" wrk "$N1" "$N2" "$N3"
OHA_ARGS=$ONE_KEY_OHA measure "7 three nodes, one redis" oha "$N1" "$N2" "$N3"

# --- table -------------------------------------------------------------------------------
{
  echo "| mode | tool | req/s | p50 ms | p99 ms | p99.9 ms | vs pass-through | vs nginx proxy_pass | Redis calls/req |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for label in "1 upstream direct" "2a nginx proxy_pass" "2b nginx limit_req" "3 gateway pass-through" \
               "4 gateway embedded store" "5 gateway redis allowed" "6 gateway redis blocked" \
               "7 three nodes, one redis"; do
    for tool in wrk oha; do
      read -r rps p50 p99 p999 _ <<< "${RESULT["$label/$tool"]}"
      read -r pass _ <<< "${RESULT["3 gateway pass-through/$tool"]}"
      read -r ngx _ <<< "${RESULT["2a nginx proxy_pass/$tool"]}"
      calls="-"
      case "$label" in 5*|6*|7*) calls=${CALLS["$label/$tool"]} ;; esac
      awk -v l="$label" -v t="$tool" -v r="$rps" -v a="$p50" -v b="$p99" -v c="$p999" -v p="$pass" -v n="$ngx" -v k="$calls" \
        'BEGIN { printf "| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %s |\n", l, t, r, a, b, c, r / p, r / n, k }'
    done
  done
  echo
  echo "wrk: keys in 4, 5 and 7 are new per request (X-Api-Key from a Lua script); oha sends one"
  echo "key whose limit is never reached. In 6 every request is blocked (limit 10 per hour)."
  echo "$CONNS connections, $DURATION per run, $THREADS worker thread(s) for the gateway and nginx, $(nproc) cores."
} | tee "$OUT/table.md"
