"""Calls a gRPC method through the gateway with the grpcio library's client, and prints one
JSON line per call: the status code's name and the details (the grpc-message), or the reply
(a streaming method's replies joined by ","), and the initial metadata (the response's
headers) as "initial".

Usage: call.py <host:port> <method path> <calls> [--tls <ca.pem> <server name>]
           [--request <text>] [--stream] [--metadata <name> <value>]... [--authority <host>]
The metadata x-api-key is "client-1" unless given.
"""
import json
import sys

import grpc


def main():
    target, method, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    request, stream, tls, options = b"hello", False, None, []
    metadata = {"x-api-key": "client-1"}
    while rest:
        flag = rest.pop(0)
        if flag == "--tls":
            tls = (rest.pop(0), rest.pop(0))
        elif flag == "--request":
            request = rest.pop(0).encode()
        elif flag == "--stream":
            stream = True
        elif flag == "--authority":
            options.append(("grpc.default_authority", rest.pop(0)))
        elif flag == "--metadata":
            name = rest.pop(0)
            metadata[name] = rest.pop(0)
    if tls:
        with open(tls[0], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", tls[1]))
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    call = channel.unary_stream(method) if stream else channel.unary_unary(method)
    for _ in range(calls):
        try:
            if stream:
                replies = call(request, timeout=10, metadata=tuple(metadata.items()))
                reply = b",".join(replies)
                initial = replies.initial_metadata()
            else:
                reply, done = call.with_call(request, timeout=10, metadata=tuple(metadata.items()))
                initial = done.initial_metadata()
            print(json.dumps({"code": "OK", "reply": reply.decode("utf-8", "replace"),
                              "initial": dict(initial or ())}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "details": e.details(),
                              "initial": dict(e.initial_metadata() or ())}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
