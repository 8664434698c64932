#!/usr/bin/env python3
"""Bounded soak: the release gateway under steady load for a few minutes, with Redis killed
and restarted in the middle, then checked for leaks and exactness.

    benches/soak.py                    # 3 minutes, Redis restarted every 45 s
    benches/soak.py --minutes 1 --restart-every 20

Load: CLIENTS threads on keep-alive connections, half on one hot key (limit LIMIT per
WINDOW_MS), half on fresh keys (the allowed path). Every SAMPLE seconds it records the
gateway's RSS, open file descriptors and threads, and the number of Redis client
connections. At the end it checks:
  - no leak: RSS, fds and threads in the last quarter within a margin of the first quarter
    after warm-up, and Redis connections back to what they were;
  - exactness: on the hot key, no sliding window of WINDOW_MS holds more than LIMIT allowed
    requests (measured from the client side, so the window is shrunk by the worst observed
    latency; with on_error = "deny" no failure ever admits a request);
  - every response was 200, 429 or (while Redis was down) 503; nothing else, no reset socket.
Exit status 0 when all hold. Only loopback is used. Needs redis-server and a built
target/release/ratelimiter (cargo build --release).
"""

import argparse
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT, WINDOW_MS = 50, 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=20.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.kill()
        self.proc.wait()

    def clients(self):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "client", "list"],
                             capture_output=True, text=True).stdout
        return len([l for l in out.splitlines() if l.strip()]) - 1  # minus redis-cli itself


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    rss_kb = int(status["VmRSS"].split()[0])
    threads = int(status["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb, fds, threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--restart-every", type=float, default=45)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--sample", type=float, default=5)
    args = ap.parse_args()

    binary = os.path.join(ROOT, "target", "release", "ratelimiter")
    if not os.path.exists(binary):
        raise SystemExit("build first: cargo build --release")
    redis = Redis()
    redis.start()
    proxy, admin = free_port(), free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(f"""[server]
threads = 2
grace_period_seconds = 1
[proxy]
listen = "127.0.0.1:{proxy}"
[proxy.direct_response]
body = "ok"
[admin]
listen = "127.0.0.1:{admin}"
[node]
id = "soak"
[redis]
url = "redis://127.0.0.1:{redis.port}"
timeout_ms = 50
on_error = "deny"
[limits]
default_limit = {LIMIT}
default_window_ms = {WINDOW_MS}
key = "header:X-Api-Key"
""")
    conf.close()
    log = open(conf.name + ".log", "w")
    gw = subprocess.Popen([binary, "-c", conf.name], stdout=subprocess.DEVNULL, stderr=log,
                          env={**os.environ, "RUST_LOG": "warn"})
    wait_port(proxy)
    time.sleep(0.5)
    baseline_clients = redis.clients()

    stop = threading.Event()
    lock = threading.Lock()
    statuses = {}
    hot_allowed = []  # (sent, received) of allowed hot-key requests
    errors = []
    worst = [0.0]

    def client(i):
        hot = i % 2 == 0
        conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=5)
        n = 0
        while not stop.is_set():
            n += 1
            key = "hot" if hot else f"c{i}-{n}-{random.random()}"
            sent = time.monotonic()
            try:
                conn.request("GET", "/", headers={"X-Api-Key": key})
                r = conn.getresponse()
                r.read()
                status = r.status
            except Exception as e:  # a reset or refused socket is a failure of the soak
                with lock:
                    errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=5)
                continue
            got = time.monotonic()
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                worst[0] = max(worst[0], got - sent)
                if hot and status == 200:
                    hot_allowed.append((sent, got))
            if hot:
                time.sleep(0.002)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()

    samples = []
    start = time.monotonic()
    end = start + args.minutes * 60
    next_restart = start + args.restart_every
    restarts = 0
    while time.monotonic() < end:
        time.sleep(args.sample)
        now = time.monotonic()
        if now >= next_restart and now + 5 < end:
            redis.stop()
            time.sleep(1)
            redis.start()
            restarts += 1
            next_restart = now + args.restart_every
        rss, fds, thr = proc_stats(gw.pid)
        samples.append((now - start, rss, fds, thr, redis.clients()))
        print(f"t={now - start:6.1f}s rss={rss / 1024:.1f}MiB fds={fds} threads={thr} "
              f"redis_clients={samples[-1][4]} statuses={dict(sorted(statuses.items()))}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    time.sleep(1)
    final_clients = redis.clients()
    gw.terminate()
    code = gw.wait(timeout=30)
    redis.stop()

    failures = []
    quarter = max(1, len(samples) // 4)
    first, last = samples[1:1 + quarter] or samples[:1], samples[-quarter:]
    avg = lambda rows, i: sum(r[i] for r in rows) / len(rows)
    for name, i, margin in (("RSS", 1, 1.25), ("fds", 2, 1.25), ("threads", 3, 1.0)):
        a, b = avg(first, i), avg(last, i)
        verdict = "ok" if b <= a * margin + 8 else "GREW"
        print(f"{name}: first quarter {a:.0f}, last quarter {b:.0f} ({verdict})")
        if verdict != "ok":
            failures.append(f"{name} grew from {a:.0f} to {b:.0f}")
    print(f"Redis client connections: before {baseline_clients}, after load {final_clients}")
    if final_clients > baseline_clients + 2:
        failures.append(f"Redis connections leaked: {baseline_clients} -> {final_clients}")

    # Exactness on the hot key: allowed requests were decided inside [sent, received]; any
    # window shorter than WINDOW_MS by the worst latency is certain to hold only requests
    # the server saw inside one window.
    slack = worst[0]
    shrunk = WINDOW_MS / 1000 - 2 * slack
    times = sorted(s for s, _ in hot_allowed)
    most, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] > shrunk:
            j += 1
        most = max(most, i - j + 1)
    print(f"hot key: {len(times)} allowed; most in any {shrunk * 1000:.0f} ms window: {most} "
          f"(limit {LIMIT}); worst latency {slack * 1000:.1f} ms")
    if shrunk > 0 and most > LIMIT:
        failures.append(f"{most} allowed in one window, limit {LIMIT}")
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 429, 503)}
    if unexpected:
        failures.append(f"unexpected statuses {unexpected}")
    if errors:
        failures.append(f"{len(errors)} failed connections, e.g. {errors[0]}")
    if code != 0:
        failures.append(f"gateway exited {code}")
    print(f"{restarts} Redis restarts; statuses {dict(sorted(statuses.items()))}")
    if failures:
        print("SOAK FAILED: " + "; ".join(failures))
        return 1
    print("soak ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
