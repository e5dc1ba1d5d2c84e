"""A stand-alone bridge-protocol client for the gRPC tests, run in its own process.

It imports only the modules the test compiled from ``snakepit/grpc/bridge.proto`` (argv[1] is
their directory), never snakepit's: what it proves works for any client generated from the
.proto. It reads a JSON list of operations on stdin and prints one JSON result per operation:

    {"rpc": "ExecuteTool", "request": {...json_format dict...},
     "params": {"a": ["integer", "2"]}, "binary": {"blob": "<base64>"},
     "metadata": [["authorization", "Bearer x"]], "timeout": 5.0,
     "read": 3, "delay": 0.01}                      # streams: read 3 chunks (then cancel)

    -> {"code": "OK", "details": "...", "trailing": {...}, "response": {...}, "chunks": [...]}
"""

from __future__ import annotations

import base64
import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import bridge_pb2
import bridge_pb2_grpc
import grpc
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any

PREFIX = "type.googleapis.com/snakepit."
REQUESTS = {
    "Ping": bridge_pb2.PingRequest,
    "InitializeSession": bridge_pb2.InitializeSessionRequest,
    "CleanupSession": bridge_pb2.CleanupSessionRequest,
    "GetSession": bridge_pb2.GetSessionRequest,
    "Heartbeat": bridge_pb2.HeartbeatRequest,
    "ExecuteTool": bridge_pb2.ExecuteToolRequest,
    "ExecuteStreamingTool": bridge_pb2.ExecuteToolRequest,
    "RegisterTools": bridge_pb2.RegisterToolsRequest,
    "GetExposedElixirTools": bridge_pb2.GetExposedElixirToolsRequest,
    "ExecuteElixirTool": bridge_pb2.ExecuteElixirToolRequest,
}


def _request(op: dict) -> object:
    message = json_format.ParseDict(op.get("request", {}), REQUESTS[op["rpc"]]())
    for name, (type_name, text) in op.get("params", {}).items():
        message.parameters[name].CopyFrom(Any(type_url=PREFIX + type_name, value=text.encode()))
    for name, data in op.get("binary", {}).items():
        message.binary_parameters[name] = base64.b64decode(data)
    return message


def _to_dict(message: object) -> dict:
    """A message as a dict of its set fields; bytes as base64, an Any as its type_url and value
    (json_format cannot print an Any of a type it does not know)."""
    out: dict = {}
    for field, value in message.ListFields():
        out[field.name] = _value(field, value)
    return out


def _value(field: object, value: object) -> object:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar(value_field, item) for key, item in value.items()}
    if getattr(field, "is_repeated", None) or getattr(field, "label", None) == 3:  # LABEL_REPEATED
        return [_scalar(field, item) for item in value]
    return _scalar(field, value)


def _scalar(field: object, value: object) -> object:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Any":
            return {"type_url": value.type_url, "value": base64.b64encode(value.value).decode()}
        return _to_dict(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _chunk(chunk: object) -> dict:
    return {
        "chunk_id": chunk.chunk_id,
        "data": base64.b64encode(chunk.data).decode(),
        "is_final": chunk.is_final,
        "metadata": dict(chunk.metadata),
    }


def run(stub: object, op: dict) -> dict:
    method = getattr(stub, op["rpc"])
    metadata = [tuple(pair) for pair in op.get("metadata", [])]
    result: dict = {"code": "OK"}
    try:
        if op["rpc"] == "ExecuteStreamingTool":
            call = method(_request(op), metadata=metadata, timeout=op.get("timeout"))
            result["chunks"] = chunks = []
            for chunk in call:
                chunks.append(_chunk(chunk))
                if "read" in op and len(chunks) >= op["read"]:
                    call.cancel()
                    break
                time.sleep(op.get("delay", 0))
            result["trailing"] = dict(call.trailing_metadata() or ())
        else:
            response, call = method.with_call(_request(op), metadata=metadata, timeout=op.get("timeout"))
            result["response"] = _to_dict(response)
            result["trailing"] = dict(call.trailing_metadata() or ())
    except grpc.RpcError as error:
        result["code"] = error.code().name
        result["details"] = error.details()
        result["trailing"] = dict(error.trailing_metadata() or ())
    return result


def main() -> None:
    address = sys.argv[2]
    credentials = None
    if len(sys.argv) > 3:  # a CA file: TLS
        with open(sys.argv[3], "rb") as ca:
            credentials = grpc.ssl_channel_credentials(ca.read())
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    stub = bridge_pb2_grpc.BridgeServiceStub(channel)
    for op in json.load(sys.stdin):
        if op.get("rpc") == "health":
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=op.get("service", "")))
                print(
                    json.dumps({"code": "OK", "status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}),
                    flush=True,
                )
            except grpc.RpcError as error:
                print(json.dumps({"code": error.code().name}), flush=True)
            continue
        print(json.dumps(run(stub, op)), flush=True)


if __name__ == "__main__":
    main()
