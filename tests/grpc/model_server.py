#!/usr/bin/env python3
"""A gRPC model server for the gateway's tests, on grpcio (gRPC's C core).

Service `switchyard.test.Model`, messages as raw bytes (no generated code needed):
  Predict    unary:            b"<sleep ms>:<text>" -> b"<name> answered <text>" after the sleep
  Stream     server streaming: b"<count>:<interval ms>" -> <count> messages, the first at once
  Chat       bidi:             each message -> b"<name> echoes <message>"
  SetHealth  unary:            b"SERVING" or b"NOT_SERVING" sets the health of service ""
  Fail       unary:            fails with INTERNAL "model crashed", before any message
and the standard `grpc.health.v1.Health`, SERVING at start.

Prints the port it listens on (127.0.0.1, port chosen by the system), then serves until its
standard input closes.
"""

import argparse
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    name = args.name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    health_service = health.HealthServicer()
    health_service.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)

    def predict(request, context):
        sleep_ms, _, text = request.partition(b":")
        if sleep_ms:
            time.sleep(int(sleep_ms) / 1000)
        return name + b" answered " + text

    def stream(request, context):
        count, _, interval_ms = request.partition(b":")
        for index in range(int(count)):
            if index:
                time.sleep(int(interval_ms) / 1000)
            yield name + b" message " + str(index).encode()

    def chat(messages, context):
        for message in messages:
            yield name + b" echoes " + message

    def set_health(request, context):
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(request.decode())
        health_service.set("", status)
        return b"ok"

    def fail(request, context):
        context.abort(grpc.StatusCode.INTERNAL, "model crashed")

    handlers = {
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Predict": grpc.unary_unary_rpc_method_handler(predict),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "SetHealth": grpc.unary_unary_rpc_method_handler(set_health),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("switchyard.test.Model", handlers),)
    )
    if args.tls_cert:
        with open(args.tls_key, "rb") as key, open(args.tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
