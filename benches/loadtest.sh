#!/usr/bin/env bash
# Load test: the gateway in each mode against its baselines, in one run on this machine.
#
# Starts a static nginx upstream, Redis, nginx as the peer proxy (proxy_pass, and limit_req),
# and the release gateway in each mode; drives each with wrk and with oha at $CONNS
# connections for $DURATION; prints one table of requests/s, p50, p99, p99.9, the ratio
# to pass-through and to nginx proxy_pass measured in the same run, CPU time per request of
# the proxy under test and of redis-server (schedstat of every thread, divided by the
# requests served: far steadier than req/s on a shared machine), and Redis calls per
# request from Redis's command statistics. HTTPS modes (2c, 11) terminate TLS with one
# certificate made here (ECDSA P-256) in nginx and in the gateway; wrk and oha speak
# HTTP/1.1 over TLS to both, oha also HTTP/2 (tool "oha-h2"); mode 13 makes a new TLS
# connection per request (the handshake's cost). Mode 12 is mode 4 with the access log on
# (JSON lines to a file). Modes 16-18 weigh requests (costs; 18 settles each); 19 and 20
# compare an exact rate rule with a concurrency rule; 21 and 22 routes (one, fifty); 23 an
# HTTP/2 upstream. Modes 14 and 15 are one hot key on a rule with sync = "lease"
# (wrk too sends one key there), counted with the sliding log and with GCRA.
#
#   benches/loadtest.sh                 # defaults: CONNS=64 DURATION=10s THREADS=1
#   CONNS=64 DURATION=20s THREADS=2 benches/loadtest.sh
#   BASELINE=path/to/older/ratelimiter benches/loadtest.sh
#   GATEWAY=path/to/ratelimiter MODES="3 5 9 10" benches/loadtest.sh
#
# THREADS is the worker count of both the gateway and nginx, so the comparison is like for
# like. BASELINE, a release binary of an earlier version, adds its pass-through, embedded
# and Redis modes to the same run, each right after the current build's, so a change is
# judged against its baseline under the same load. MODES (a space-separated list of mode
# numbers, e.g. "3 4 5") runs only those. RUNS=3 measures every mode three times, one round
# after another, and reports medians (with the range of the CPU figures). Installs nginx, wrk and redis-server (Debian) and
# oha (crates.io) when missing. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
BASELINE=${BASELINE:-}
MODES=${MODES:-}
RUNS=${RUNS:-1}
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
# GATEWAY: a release binary to measure instead of building the working tree.
if [ -n "${GATEWAY:-}" ]; then
  GW=$(cd "$(dirname "$GATEWAY")" && pwd)/$(basename "$GATEWAY")
else
  cargo build --release --locked --quiet
  GW="$PWD/target/release/ratelimiter"
fi

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

UP=$(free_port); UP_H2=$(free_port); NGX_PROXY=$(free_port); NGX_LIMIT=$(free_port); NGX_TLS=$(free_port)
REDIS=$(free_port)
# One certificate for both TLS terminators.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$OUT/tls.key" -out "$OUT/tls.pem" 2>/dev/null
# Two nginx processes: the upstream, and the peer proxy under test, so the peer's CPU time
# per request does not include serving the upstream.
for role in upstream peer; do mkdir -p "$OUT/nginx-$role/logs"; done
cat > "$OUT/nginx-upstream/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $OUT/nginx-upstream/nginx.pid;
error_log $OUT/nginx-upstream/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  # /usage/ also says what the request used, for the modes that settle (16-18).
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; }
           location /usage/ { add_header X-Usage 3; return 200 "ok\n"; } }
  # The same answer over cleartext HTTP/2 (prior knowledge), for mode 23.
  server { listen 127.0.0.1:$UP_H2 http2; location / { return 200 "ok\n"; } }
}
NGINX
cat > "$OUT/nginx-peer/nginx.conf" <<NGINX
worker_processes $THREADS;
daemon off;
pid $OUT/nginx-peer/nginx.pid;
error_log $OUT/nginx-peer/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=peer:10m rate=1000000r/s;
  server {
    listen 127.0.0.1:$NGX_PROXY;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$NGX_TLS ssl http2;
    ssl_certificate $OUT/tls.pem;
    ssl_certificate_key $OUT/tls.key;
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
nginx -p "$OUT/nginx-upstream" -c "$OUT/nginx-upstream/nginx.conf" & pids+=($!)
nginx -p "$OUT/nginx-peer" -c "$OUT/nginx-peer/nginx.conf" & pids+=($!)
NGINX_PID=$!
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null & pids+=($!)
REDIS_PID=$!
wait_port "$UP"; wait_port "$UP_H2"; wait_port "$NGX_PROXY"; wait_port "$NGX_LIMIT"; wait_port "$NGX_TLS"
wait_port "$REDIS"

# gateway NAME LIMITS_TOML [REDIS] [EXTRA_TOML]: starts one gateway ($GW_BIN, default the
# current build); its proxy port is left in $PORT and its pid in $GWPID. With GW_TLS=1 it
# also listens for HTTPS, on $TLS_PORT.
gateway() {
  local name=$1 limits=$2 redis=${3:-} extra=${4:-} port admin
  port=$(free_port); admin=$(free_port); TLS_PORT=$(free_port)
  {
    # One single-threaded runtime per thread: faster than pingora's work-stealing default
    # for a proxy (docs/PERFORMANCE.md).
    printf '[server]\nthreads = %s\nwork_stealing = false\ngrace_period_seconds = 0\n' "$THREADS"
    printf '[proxy]\nlisten = "127.0.0.1:%s"\nupstreams = ["127.0.0.1:%s"]\n' "$port" "$UP"
    [ "${GW_TLS:-0}" = 1 ] && printf 'tls_listen = "127.0.0.1:%s"\ntls_cert_file = "%s"\ntls_key_file = "%s"\n' \
      "$TLS_PORT" "$OUT/tls.pem" "$OUT/tls.key"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[node]\nid = "%s"\n' "$admin" "$name"
    [ -n "$redis" ] && printf '[redis]\nurl = "redis://127.0.0.1:%s"\ntimeout_ms = 1000\n' "$redis"
    printf '[limits]\n%s\n%s\n' "$limits" "$extra"
  } > "$OUT/$name.toml"
  RUST_LOG=warn "${GW_BIN:-$GW}" -c "$OUT/$name.toml" >/dev/null 2> "$OUT/$name.log" & pids+=($!)
  GWPID=$!
  wait_port "$port"
  [ "${GW_TLS:-0}" = 1 ] && wait_port "$TLS_PORT"
  PORT=$port
}

# Stops the last gateway started (modes run one at a time, so they never share the cores).
stop_gateway() { kill "$GWPID" 2>/dev/null || true; wait "$GWPID" 2>/dev/null || true; }

# cpu_ns PID...: CPU time so far of every thread of these processes, in ns (schedstat).
cpu_ns() {
  local total=0 pid f ns
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/schedstat; do
      read -r ns _ < "$f" 2>/dev/null && total=$((total + ns))
    done
  done
  echo "$total"
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
    wrk -t1 -c"$conns" -d"$DURATION" -s "$OUT/report.lua" "${SCHEME:-http}://127.0.0.1:$port${TARGET_PATH:-/}" >/dev/null 2>"$f" &
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
    oha --no-tui -c "$conns" -z "$DURATION" --output-format json --insecure $OHA_ARGS \
      "${SCHEME:-http}://127.0.0.1:$port${TARGET_PATH:-/}" > "$f" &
  done
  wait_jobs
  for f in "${files[@]}"; do
    jq -r '[.summary.requestsPerSec, .latencyPercentiles.p50 * 1000, .latencyPercentiles.p99 * 1000,
            .latencyPercentiles["p99.9"] * 1000, ([.statusCodeDistribution[]] | add)] | @tsv' "$f"
  done | awk '{ rps += $1; if ($2 > p50) p50 = $2; if ($3 > p99) p99 = $3; if ($4 > p999) p999 = $4;
    reqs += $5 } END { printf "%.0f %.2f %.2f %.2f %d\n", rps, p50, p99, p999, reqs }'
  rm -f "${files[@]}"
}

# oha over HTTP/2 (one request in flight per connection, as with HTTP/1.1).
run_oha-h2() { OHA_ARGS="$OHA_ARGS --http2" run_oha "$@"; }

# Waits for the load generators only (the servers are background jobs too).
wait_jobs() {
  local p
  for p in $(jobs -p); do
    case " ${pids[*]} " in *" $p "*) ;; *) wait "$p" ;; esac
  done
}

redis_calls() { redis-cli -p "$REDIS" info commandstats | awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 }'; }

ROWS="$OUT/rows.tsv"
: > "$ROWS"
# measure LABEL TOOL PORT...: one row, appended to $ROWS. $CPU_PIDS are the processes whose
# CPU is charged to the proxy under test (the gateways, or nginx and its workers).
measure() {
  local label=$1 tool=$2; shift 2
  redis-cli -p "$REDIS" config resetstat >/dev/null
  local pids="$CPU_PIDS"
  [ "$pids" = nginx ] && pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
  local c0 r0; c0=$(cpu_ns $pids); r0=$(cpu_ns "$REDIS_PID")
  local r; r=$("run_$tool" "$@")
  local c1 r1; c1=$(cpu_ns $pids); r1=$(cpu_ns "$REDIS_PID")
  local calls; calls=$(redis_calls); calls=${calls:-0}
  local reqs; reqs=$(echo "$r" | awk '{ print $5 }')
  local per_req cpu rcpu
  per_req=$(awk -v c="$calls" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.4f", c / r; else print "-" }')
  cpu=$(awk -v a="$c0" -v b="$c1" -v r="$reqs" -v p="$pids" 'BEGIN { if (r > 0 && p != "") printf "%.1f", (b - a) / 1000 / r; else print "-" }')
  rcpu=$(awk -v a="$r0" -v b="$r1" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.1f", (b - a) / 1000 / r; else print "-" }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$tool" "$r" "$per_req" "$cpu" "$rcpu" >> "$ROWS"
  echo "  $label/$tool: $r (evalsha $calls, $cpu µs/req, redis $rcpu µs/req)" >&2
}

# wanted N: whether mode N is to run.
wanted() { [ -z "$MODES" ] || case " $MODES " in *" $1 "*) true ;; *) false ;; esac; }

ONE_KEY_OHA="-H X-Api-Key:bench"
echo "load: $CONNS connections, $DURATION per run, $THREADS worker thread(s)" >&2

for RUN in $(seq 1 "$RUNS"); do
[ "$RUNS" = 1 ] || echo "round $RUN of $RUNS" >&2
OHA_ARGS=""
export UNIQUE_KEYS=0
CPU_PIDS=""
if wanted 1; then for tool in wrk oha; do measure "1 upstream direct" "$tool" "$UP"; done; fi
CPU_PIDS=nginx
if wanted 2; then
  for tool in wrk oha; do measure "2a nginx proxy_pass" "$tool" "$NGX_PROXY"; done
  for tool in wrk oha; do measure "2b nginx limit_req" "$tool" "$NGX_LIMIT"; done
fi

BY_KEY='default_limit = 1000000000
default_window_ms = 1000
key = "header:X-Api-Key"'
# Two rules on every path beside the default: three counters per request (per key, per IP,
# and one for all), none of them ever full.
THREE_RULES='[[rules]]
name = "per-ip"
path_prefix = "/"
key = "ip"
limit = 1000000000
window_ms = 1000
[[rules]]
name = "all"
path_prefix = "/"
key = "global"
limit = 1000000000
window_ms = 1000'

# One rule on every path in place of the default, with another algorithm (never full).
algorithm_rule() {
  printf '[[rules]]\nname = "api"\npath_prefix = "/"\nkey = "header:X-Api-Key"\nalgorithm = "%s"\nlimit = 1000000000\nwindow_ms = 1000\nskip_default = true\n' "$1"
}

# each_build LABEL LIMITS [REDIS] [EXTRA]: the mode with the current build, then (with
# BASELINE) the same mode with the baseline binary, as rows "LABEL" and "LABEL (baseline)".
each_build() {
  local label=$1 limits=$2 redis=${3:-} extra=${4:-}
  local builds=("$GW")
  # A baseline from before rules would refuse a config with [[rules]].
  [ -n "$BASELINE" ] && [ -z "$extra" ] && builds+=("$BASELINE")
  for bin in "${builds[@]}"; do
    local row=$label
    [ "$bin" = "$GW" ] || row="$label (baseline)"
    GW_BIN=$bin gateway "$(echo "$label" | tr -c 'a-z0-9\n' '-')" "$limits" "$redis" "$extra"
    CPU_PIDS=$GWPID
    if [ "$UNIQUE_KEYS" = 1 ]; then
      measure "$row" wrk "$PORT"
      OHA_ARGS=$ONE_KEY_OHA measure "$row" oha "$PORT"
    else
      for tool in wrk oha; do measure "$row" "$tool" "$PORT"; done
    fi
    stop_gateway
  done
}

wanted 3 && each_build "3 gateway pass-through" 'enabled = false'
if wanted 11; then
  CPU_PIDS=nginx
  for tool in wrk oha oha-h2; do SCHEME=https measure "2c nginx https proxy_pass" "$tool" "$NGX_TLS"; done
  GW_TLS=1 gateway "https-pass-through" 'enabled = false'
  CPU_PIDS=$GWPID
  for tool in wrk oha oha-h2; do SCHEME=https measure "11 gateway https pass-through" "$tool" "$TLS_PORT"; done
  stop_gateway
fi
if wanted 13; then
  # A new TLS connection per request: the handshake's cost (oha only; wrk keeps connections).
  CPU_PIDS=nginx
  SCHEME=https OHA_ARGS="--disable-keepalive" measure "13a nginx https, a handshake per request" oha "$NGX_TLS"
  GW_TLS=1 gateway "https-handshakes" 'enabled = false'
  CPU_PIDS=$GWPID
  SCHEME=https OHA_ARGS="--disable-keepalive" measure "13b gateway https, a handshake per request" oha "$TLS_PORT"
  stop_gateway
fi
export UNIQUE_KEYS=1
wanted 4 && each_build "4 gateway embedded store" "$BY_KEY"
wanted 12 && each_build "12 embedded, access log on" "$BY_KEY" "" "[log]
access = \"$OUT/access.log\"
format = \"json\""
wanted 5 && each_build "5 gateway redis allowed" "$BY_KEY" "$REDIS"
wanted 8 && each_build "8 redis, three rules" "$BY_KEY" "$REDIS" "$THREE_RULES"
wanted 9 && each_build "9 redis, gcra" "$BY_KEY" "$REDIS" "$(algorithm_rule gcra)"
wanted 10 && each_build "10 redis, sliding_window" "$BY_KEY" "$REDIS" "$(algorithm_rule sliding_window)"
UNIQUE_KEYS=0
# One hot key on a leasing rule (never full): slots taken limit/100 at a time, decided locally;
# 14 counts with the sliding log (one entry per lease in Redis), 15 with GCRA (one integer).
lease_rule() {
  printf '[[rules]]\nname = "api"\npath_prefix = "/"\nkey = "header:X-Api-Key"\nalgorithm = "%s"\nlimit = 1000000000\nwindow_ms = 1000\nskip_default = true\nsync = "lease"\n' "$1"
}
wanted 14 && each_build "14 redis, lease rule, one key" "$BY_KEY" "$REDIS" "$(lease_rule sliding_log)"
wanted 15 && each_build "15 redis, gcra lease rule, one key" "$BY_KEY" "$REDIS" "$(lease_rule gcra)"
# Costs (contract §13), one rule on every path keyed by X-Api-Key (new per request):
# 16 reserves 1 unit, 17 reserves 5, 18 reserves 5 and settles at the 3 the upstream's
# X-Usage says (a settle script call per request, off the request path). All three ask for
# /usage/, whose answer carries X-Usage.
cost_rule() {
  printf '[[rules]]\nname = "api"\npath_prefix = "/"\nkey = "header:X-Api-Key"\nlimit = 1000000000\nwindow_ms = 1000\nskip_default = true\ncost = %s\n%s\n' "$1" "${2:-}"
}
export UNIQUE_KEYS=1
export TARGET_PATH=/usage/
wanted 16 && each_build "16 redis, cost 1" "$BY_KEY" "$REDIS" "$(cost_rule 1)"
wanted 17 && each_build "17 redis, cost 5" "$BY_KEY" "$REDIS" "$(cost_rule 5)"
wanted 18 && each_build "18 redis, cost 5 settled at 3" "$BY_KEY" "$REDIS" "$(cost_rule 5 'settle = "header:X-Usage"')"
UNIQUE_KEYS=0 TARGET_PATH=/
# Concurrency (contract §14) against the exact rate rule it replaces, keyed by X-Api-Key (wrk:
# a new key per request; oha: one key): 19 counts requests per window, 20 holds a slot per
# request in flight (a slot taken in the check call, freed by a settle call once the
# response has been sent), never full.
rate_or_slots() {
  printf '[[rules]]\nname = "api"\npath_prefix = "/"\nkey = "header:X-Api-Key"\n%s\nskip_default = true\n' "$1"
}
export UNIQUE_KEYS=1
wanted 19 && each_build "19 redis, exact rate rule" "$BY_KEY" "$REDIS" "$(rate_or_slots 'limit = 1000000000
window_ms = 1000')"
wanted 20 && each_build "20 redis, concurrency rule" "$BY_KEY" "$REDIS" "$(rate_or_slots 'concurrency = 1000000')"
UNIQUE_KEYS=0
# Routes (contract §18), limits off: 21 has one route, 22 fifty, the request meeting the last
# (fifty matchers tried); both send it to the same upstream as pass-through (mode 3).
route_tables() {
  local n=$1 i
  for i in $(seq 0 $((n - 1))); do
    printf '[[routes]]\nname = "r%s"\npath_prefix = "/r%s/"\nupstreams = ["127.0.0.1:%s"]\n' "$i" "$i" "$UP"
  done
}
if wanted 21; then TARGET_PATH=/r0/x each_build "21 one route" 'enabled = false' "" "$(route_tables 1)"; fi
if wanted 22; then TARGET_PATH=/r49/x each_build "22 fifty routes, the last" 'enabled = false' "" "$(route_tables 50)"; fi
# An HTTP/2 upstream (h2://, the same nginx answer over cleartext HTTP/2) against mode 3's
# HTTP/1.1 one.
if wanted 23; then
  printf -v h2route '[[routes]]\nname = "h2"\npath_prefix = "/"\nupstreams = ["h2://127.0.0.1:%s"]\n' "$UP_H2"
  each_build "23 pass-through, h2 upstream" 'enabled = false' "" "$h2route"
fi
wanted 6 && each_build "6 gateway redis blocked" 'default_limit = 10
default_window_ms = 3600000' "$REDIS"

if wanted 7; then
  gateway node-1 "$BY_KEY" "$REDIS"; N1=$PORT; P1=$GWPID
  gateway node-2 "$BY_KEY" "$REDIS"; N2=$PORT; P2=$GWPID
  gateway node-3 "$BY_KEY" "$REDIS"; N3=$PORT; P3=$GWPID
  CPU_PIDS="$P1 $P2 $P3"
  UNIQUE_KEYS=1 measure "7 three nodes, one redis" wrk "$N1" "$N2" "$N3"
  OHA_ARGS=$ONE_KEY_OHA measure "7 three nodes, one redis" oha "$N1" "$N2" "$N3"
  kill "$P1" "$P2" "$P3" 2>/dev/null || true
  wait "$P1" "$P2" "$P3" 2>/dev/null || true
fi
done

# --- table -------------------------------------------------------------------------------
# Medians over the runs, in the order the modes first ran; the CPU columns give the range
# when there were several runs.
{
  python3 - "$ROWS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, tool, result, calls, cpu, rcpu = line.rstrip("\n").split("\t")
    rps, p50, p99, p999, _ = result.split()
    rows.setdefault((label, tool), []).append(
        (float(rps), float(p50), float(p99), float(p999), calls, cpu, rcpu))

def med(xs):
    return statistics.median(xs) if xs else None

def num(values, digits=1, spread=True):
    xs = [float(v) for v in values if v not in ("-", "")]
    if not xs:
        return "-"
    m = med(xs)
    if len(xs) == 1 or not spread:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"

def rps_of(label, tool):
    r = rows.get((label, tool))
    return med([x[0] for x in r]) if r else None

print("| mode | tool | req/s | p50 ms | p99 ms | p99.9 ms | vs pass-through | vs nginx proxy_pass "
      "| CPU µs/req | Redis CPU µs/req | Redis calls/req |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (label, tool), r in rows.items():
    rps = med([x[0] for x in r])
    ratio = lambda base: f"{rps / base:.2f}" if base else "-"
    redis = label.split()[0] in ("5", "6", "7", "8", "9", "10", "14", "15", "16", "17", "18", "19", "20")
    https = "https" in label
    passthrough = "11 gateway https pass-through" if https else "3 gateway pass-through"
    nginx = "2c nginx https proxy_pass" if https else "2a nginx proxy_pass"
    print(f"| {label} | {tool} | {rps:.0f} | {med([x[1] for x in r]):.2f} | {med([x[2] for x in r]):.2f} "
          f"| {med([x[3] for x in r]):.2f} | {ratio(rps_of(passthrough, tool))} "
          f"| {ratio(rps_of(nginx, tool))} | {num([x[5] for x in r])} "
          f"| {num([x[6] for x in r]) if redis else '-'} | {num([x[4] for x in r], 4, False) if redis else '-'} |")
PY
  echo
  echo "wrk: keys in 4, 5 and 7-10 are new per request (X-Api-Key from a Lua script); oha sends one"
  echo "key whose limit is never reached. In 6 every request is blocked (limit 10 per hour). In 8"
  echo "every request owes three rules (per key, per IP, global), decided in one script call; 9"
  echo "and 10 are 5 with one rule of another algorithm in place of the default. 2c and 11 terminate"
  echo "TLS (the same ECDSA P-256 certificate; connections kept alive, so handshakes are few) and"
  echo "compare with each other; oha-h2 is oha over HTTP/2; 13 makes a TLS handshake per request."
  echo "12 is 4 with the access log on (JSON"
  echo "lines to a file); compare its CPU µs/req with 4's. 14 and 15: one hot key on a rule"
  echo "with sync = \"lease\" (automatic leases: limit/100 slots; sliding_log, gcra), with wrk and oha alike."
  echo "CPU µs/req: the proxy under test (the gateway, or nginx with its workers), all threads."
  echo "$CONNS connections, $DURATION per run, $THREADS worker thread(s) for the gateway and nginx, $(nproc) cores, $RUNS run(s) per mode (medians)."
} | tee "$OUT/table.md"
