#!/usr/bin/env python3
"""Slow and huge request headers against a server, watching what they cost it.

Opens CONNECTIONS connections to TARGET, sends each an unfinished request header padded to
PAD bytes, then one more byte every TRICKLE seconds, for DURATION seconds. Every second it
samples the server's resident memory and open descriptors (summed over PIDS: a gateway, or
nginx's master and workers) and how long a health check takes. Prints one JSON line:

    {"peak_rss_mb": ..., "peak_fds": ..., "accepted_max": ..., "closed": ..., "still_open": ...,
     "closed_after_s": [min, median, max], "health_failures": ..., "health_slowest_ms": ...}

    benches/slow_headers.py --target 127.0.0.1:8080 --pids 1234 --connections 1100 \
        --pad 100 --trickle 20 --duration 75 --health http://127.0.0.1:9090/health

Used for the figures in docs/PERFORMANCE.md ("Slow and huge headers"); the test
`tests/slow_headers.rs` checks the bounds themselves.
"""

import argparse
import json
import os
import socket
import statistics
import time
import urllib.request


def rss_and_fds(pids):
    rss, fds = 0, 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError:
            pass
    return rss / 1024, fds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--pids", required=True, help="comma-separated")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--pad", type=int, default=900 * 1024)
    p.add_argument("--trickle", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--health")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    pids = [int(x) for x in a.pids.split(",")]

    start = time.monotonic()
    socks, closed = [], {}
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * a.pad
    for i in range(a.connections):
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
        except OSError as e:
            closed[i] = (time.monotonic() - start, f"connect: {e}")
            socks.append(None)
            continue
        s.setblocking(False)
        try:
            s.send(head)
        except OSError:
            pass
        socks.append(s)

    peak_rss, peak_fds, health = 0.0, 0, []
    next_byte = start + a.trickle
    while time.monotonic() - start < a.duration and len(closed) < a.connections:
        now = time.monotonic()
        send = now >= next_byte
        if send:
            next_byte += a.trickle
        for i, s in enumerate(socks):
            if s is None or i in closed:
                continue
            try:
                if s.recv(256) is not None:
                    closed[i] = (now - start, "closed")
                    continue
            except BlockingIOError:
                pass
            except OSError as e:
                closed[i] = (now - start, str(e))
                continue
            if send:
                try:
                    s.send(b"a")
                except BlockingIOError:
                    pass
                except OSError as e:
                    closed[i] = (now - start, str(e))
        rss, fds = rss_and_fds(pids)
        peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
        if a.health:
            t = time.monotonic()
            try:
                urllib.request.urlopen(a.health, timeout=2).read()
                health.append((True, time.monotonic() - t))
            except Exception:
                health.append((False, time.monotonic() - t))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))

    times = sorted(t for t, _ in closed.values())
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss, 1),
                "peak_fds": peak_fds,
                "closed": len(closed),
                "still_open": a.connections - len(closed),
                "closed_after_s": [round(times[0], 1), round(statistics.median(times), 1), round(times[-1], 1)]
                if times
                else None,
                "health_failures": sum(1 for ok, _ in health if not ok),
                "health_slowest_ms": round(max((d for _, d in health), default=0) * 1000),
            }
        )
    )
    for s in socks:
        if s is not None:
            s.close()


if __name__ == "__main__":
    main()
