"""gRPC server reflection, both versions: ``grpc.reflection.v1`` (what current clients ask
first) and ``grpc.reflection.v1alpha`` (what grpcio-reflection ships, and grpcurl falls back to).

The two versions' messages are the same on the wire; only the service's name differs. So v1 is
v1alpha's servicer registered a second time under v1's name, and described by a copy of
v1alpha's file with the package renamed. Everything is described from the bridge protocol's own
descriptor pool (:mod:`._descriptors`), which this adds health's and reflection's files to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from snakepit.grpc import _descriptors

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_METHOD = "ServerReflectionInfo"


def enable(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serve reflection of ``services`` (and of reflection itself) under both versions."""
    _descriptors.add(health_pb2.DESCRIPTOR.serialized_pb)
    _descriptors.add(reflection_pb2.DESCRIPTOR.serialized_pb)
    _descriptors.add(
        _renamed(reflection_pb2.DESCRIPTOR.serialized_pb, "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    )
    servicer: Any = reflection.aio.ReflectionServicer((*services, V1, V1ALPHA), pool=_descriptors.POOL)  # pyright: ignore[reportAttributeAccessIssue]
    for name in (V1ALPHA, V1):
        handlers = {
            _METHOD: grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def _renamed(serialized: bytes, name: str, new: str) -> bytes:
    """A file's descriptor as the file ``name`` of package ``new`` (every reference to its
    types renamed with it)."""
    file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    old = file.package
    file.name = name
    file.package = new
    file.ClearField("options")

    def rename(reference: str) -> str:
        return reference.replace(f".{old}.", f".{new}.", 1)

    def fix(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                if field.type_name:
                    field.type_name = rename(field.type_name)
            fix(message.nested_type)

    fix(file.message_type)
    for service in file.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    return file.SerializeToString()
