"""Calls a gRPC method through the gateway with the grpcio library's client, and prints one
JSON line per call: the status code's name and the details (the grpc-message).

Usage: call.py <host:port> <method path> <calls> [--tls <ca.pem> <server name>]
"""
import json
import sys

import grpc


def main():
    target, method, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4] == "--tls":
        with open(sys.argv[5], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", sys.argv[6])]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    call = channel.unary_unary(method)
    for _ in range(calls):
        try:
            reply = call(b"hello", timeout=10, metadata=(("x-api-key", "client-1"),))
            print(json.dumps({"code": "OK", "reply": reply.decode("utf-8", "replace")}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details()}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
