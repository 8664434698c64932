"""A Flask application standing in for a real API behind the gateway in the tests.

Its routes are Flask's own (werkzeug's router), so a test sees which view the framework ran
for a request, not an echo of the path. Every view counts its runs; `GET /_runs` (asked
directly, not through the gateway) returns the counts, `POST /_reset` clears them.

    python flask_app.py PORT
"""

import sys
import threading
from collections import Counter

from flask import Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler, run_simple

app = Flask(__name__)
runs = Counter()
lock = threading.Lock()


def ran(view):
    with lock:
        runs[view] += 1
    return jsonify(
        view=view,
        method=request.method,
        path=request.path,
        raw_uri=request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"),
        host=request.host,
        api_keys=request.headers.getlist("X-Api-Key"),
        content_length=request.headers.get("Content-Length"),
    )


@app.route("/healthz", methods=["GET"])
def health():
    return ran("health")


@app.route("/login", methods=["POST"])
def login():
    return ran("login")


@app.route("/api/items/<path:item>", methods=["GET"])
def items(item):
    return ran("items")


@app.route("/api/orders", methods=["GET", "POST"])
def orders():
    return ran("orders")


@app.route("/_runs")
def show_runs():
    with lock:
        return jsonify(dict(runs))


@app.route("/_reset", methods=["POST"])
def reset():
    with lock:
        runs.clear()
    return jsonify(reset=True)


if __name__ == "__main__":
    # Keep-alive connections, as a production server would offer.
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
