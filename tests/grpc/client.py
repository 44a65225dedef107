#!/usr/bin/env python3
"""A gRPC client for the gateway's tests, on grpcio.

Usage: client.py <host:port> <calls.json>. Each call is an object:
  {"method": "Predict" | "Stream" | "Chat" | "SetHealth" | "Fail", "request": "...", "requests": [...],
   "metadata": [["key", "value"], ...], "timeout": seconds, "copies": n}
`copies` sends that many at once. Prints one JSON line per call (per copy):
  {"code": "OK", "details": "...", "initial": {...}, "responses": [...], "elapsed": seconds}
"""

import json
import sys
import time
from concurrent import futures

import grpc


def one_call(channel, call):
    method = "/switchyard.test.Model/" + call["method"]
    metadata = [tuple(pair) for pair in call.get("metadata", [])]
    timeout = call.get("timeout")
    result = {"code": "OK", "details": "", "initial": {}, "responses": []}
    started = time.monotonic()
    try:
        if call["method"] in ("Predict", "SetHealth", "Fail"):
            answer, state = channel.unary_unary(method).with_call(
                call["request"].encode(), metadata=metadata, timeout=timeout
            )
            result["responses"].append(answer.decode())
            result["initial"] = dict(state.initial_metadata())
        else:
            if call["method"] == "Stream":
                answers = channel.unary_stream(method)(
                    call["request"].encode(), metadata=metadata, timeout=timeout
                )
            else:
                requests = iter([r.encode() for r in call["requests"]])
                answers = channel.stream_stream(method)(
                    requests, metadata=metadata, timeout=timeout
                )
            for answer in answers:
                result["responses"].append(answer.decode())
            result["initial"] = dict(answers.initial_metadata())
    except grpc.RpcError as error:
        result["code"] = error.code().name
        result["details"] = error.details() or ""
        try:
            result["initial"] = dict(error.initial_metadata() or ())
        except Exception:
            pass
    result["elapsed"] = time.monotonic() - started
    return result


def main():
    target, calls_file = sys.argv[1], sys.argv[2]
    with open(calls_file) as calls:
        calls = json.load(calls)
    with grpc.insecure_channel(target) as channel:
        for call in calls:
            copies = call.get("copies", 1)
            with futures.ThreadPoolExecutor(max_workers=copies) as pool:
                for result in pool.map(lambda _: one_call(channel, call), range(copies)):
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
