#!/usr/bin/env python3
"""A binary upgrade and a graceful stop under load, for the gateway and for nginx.

Runs a small HTTP/1.1 upstream, then for each server: CLIENTS keep-alive clients (each one
request after another on its connection, a new connection after `Connection: close` or a
closed one) and FRESH clients opening a new connection per request, for DURATION seconds;
halfway through, the server is upgraded in place:

- the gateway: `ratelimiter -u -c FILE` started beside it (the old process hands over and
  drains);
- nginx: `kill -USR2` to the master (a new master from the same binary), then `kill -QUIT`
  to the old one once the new one has written its pid file, as its documentation says;

then stopped gracefully (`SIGTERM` for the gateway, `SIGQUIT` for nginx) while the load
still runs. Prints one JSON line per server and phase:

    {"server": "gateway", "phase": "upgrade", "answered": ..., "lost": ..., "refused": ...,
     "failed": ..., "clients_losing": ...}

`lost`: a request sent whose connection ended without an answer; `refused`: a connection
refused (nothing sent); `failed`: an answer other than 200.

    benches/upgrade.py --gateway target/release/ratelimiter --nginx /usr/sbin/nginx

Used for the figures in the README (Operations); `tests/operations.rs` checks the same
properties of the gateway on every run.
"""

import argparse
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ThreadedServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.answered = self.lost = self.refused = self.failed = self.clients_losing = 0

    def add(self, answered, lost, refused, failed):
        with self.lock:
            self.answered += answered
            self.lost += lost
            self.refused += refused
            self.failed += failed
            self.clients_losing += 1 if lost else 0


def request(sock, host):
    """One GET on `sock`; returns (status, close) or raises when the connection ends first."""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before an answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return status, headers.get("connection", "").lower() == "close"


def client(addr, keepalive, stop, tally):
    host, port = addr.rsplit(":", 1)
    answered = lost = refused = failed = 0
    sock = None
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection((host, int(port)), timeout=10)
            except OSError:
                refused += 1
                time.sleep(0.005)
                continue
        try:
            status, close = request(sock, addr)
            answered += 1
            failed += status != 200
            if close or not keepalive:
                sock.close()
                sock = None
        except OSError:
            lost += 1
            sock.close()
            sock = None
    if sock:
        sock.close()
    tally.add(answered, lost, refused, failed)


def load(addr, clients, fresh, seconds, action):
    """Runs the load for `seconds`, calling `action` halfway; returns the tally."""
    stop, tally = threading.Event(), Tally()
    threads = [
        threading.Thread(target=client, args=(addr, i < clients, stop, tally))
        for i in range(clients + fresh)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    action()
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    return tally


def wait_port(addr, limit=20):
    host, port = addr.rsplit(":", 1)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {addr}")


def wait_exit(pid, limit=60):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if ") Z " in f.read():
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    raise SystemExit(f"process {pid} did not exit")


def report(server, phase, t):
    print(json.dumps({"server": server, "phase": phase, "answered": t.answered, "lost": t.lost,
                      "refused": t.refused, "failed": t.failed,
                      "clients_losing": t.clients_losing}), flush=True)


def gateway(binary, upstream, dirname, a):
    addr, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    conf = os.path.join(dirname, "gateway.toml")
    pid_file = os.path.join(dirname, "gateway.pid")
    with open(conf, "w") as f:
        f.write(f'[server]\nthreads = 2\ngrace_period_seconds = 30\npid_file = "{pid_file}"\n\n'
                f'[proxy]\nlisten = "{addr}"\nupstreams = ["{upstream}"]\n\n'
                f'[admin]\nlisten = "{admin}"\n\n[limits]\ndefault_limit = 1000000000\n')
    log = open(os.path.join(dirname, "gateway.log"), "w")
    subprocess.run([binary, "-d", "-c", conf], stderr=log, check=True)
    wait_port(addr)
    old = int(open(pid_file).read())
    report("gateway", "upgrade", load(addr, a.clients, a.fresh, a.duration,
           lambda: subprocess.run([binary, "-u", "-d", "-c", conf], stderr=log, check=True)))
    wait_exit(old)
    new = int(open(pid_file).read())
    report("gateway", "stop", load(addr, a.clients, a.fresh, a.duration,
           lambda: os.kill(new, signal.SIGTERM)))
    wait_exit(new)


def nginx(binary, upstream, dirname, a):
    addr = f"127.0.0.1:{free_port()}"
    pid_file = os.path.join(dirname, "nginx.pid")
    conf = os.path.join(dirname, "nginx.conf")
    os.makedirs(os.path.join(dirname, "logs"), exist_ok=True)
    temp = " ".join(f"{k}_temp_path {dirname}/{k};" for k in
                    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    with open(conf, "w") as f:
        f.write(f"worker_processes 2;\npid {pid_file};\nerror_log {dirname}/logs/error.log;\n"
                f"events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  {temp}\n"
                f"  upstream app {{ server {upstream}; keepalive 32; }}\n"
                f"  server {{ listen {addr}; location / {{ proxy_pass http://app; "
                f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n")
    subprocess.run([binary, "-p", dirname, "-c", conf], check=True)
    wait_port(addr)
    old = int(open(pid_file).read())

    def upgrade():
        os.kill(old, signal.SIGUSR2)
        end = time.monotonic() + 10
        while not os.path.exists(pid_file + ".oldbin") and time.monotonic() < end:
            time.sleep(0.01)
        while not os.path.exists(pid_file) and time.monotonic() < end:
            time.sleep(0.01)
        os.kill(old, signal.SIGQUIT)

    report("nginx", "upgrade", load(addr, a.clients, a.fresh, a.duration, upgrade))
    wait_exit(old)
    new = int(open(pid_file).read())
    report("nginx", "stop", load(addr, a.clients, a.fresh, a.duration,
           lambda: os.kill(new, signal.SIGQUIT)))
    wait_exit(new)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", default="target/release/ratelimiter")
    p.add_argument("--nginx", default="/usr/sbin/nginx")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--fresh", type=int, default=4)
    p.add_argument("--duration", type=float, default=6.0)
    a = p.parse_args()
    up = ThreadedServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    upstream = f"127.0.0.1:{up.server_address[1]}"
    with tempfile.TemporaryDirectory() as d:
        gateway(os.path.abspath(a.gateway), upstream, d, a)
        nginx(a.nginx, upstream, d, a)


if __name__ == "__main__":
    main()
