"""A gRPC service for the tests, on the grpcio library's server (cleartext HTTP/2, or HTTP/2
over TLS with --tls, which a client must choose by ALPN): the
method /test.Echo/Say answers "echo:" and the request; /test.Echo/Count streams the request's
number of replies ("1", "2", ...), one every 50 ms; /test.Echo/Sleep answers "awake" after
the request's number of milliseconds. Prints its port once it serves.

Usage: server.py [--tls <cert.pem> <key.pem>]
"""
import sys
import time
from concurrent import futures

import grpc


def say(request, context):
    return b"echo:" + request


def count(request, context):
    for i in range(int(request.decode() or "0")):
        time.sleep(0.05)
        yield str(i + 1).encode()


def sleep(request, context):
    time.sleep(int(request.decode() or "0") / 1000)
    return b"awake"


def main():
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    if sys.argv[1:2] == ["--tls"]:
        with open(sys.argv[2], "rb") as c, open(sys.argv[3], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port)
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
