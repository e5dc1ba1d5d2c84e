"""The bridge protocol's own descriptor pool, apart from protobuf's default one.

Snakepit's generated stubs (package ``snakepit.bridge``, as any code generated from its
``.proto`` is) put the same message names in the default pool; ours there would make
``import snakepit.grpc`` fail in a program that imports both. So ``bridge_pb2`` builds its
messages in :data:`POOL`, which carries its own copies of the files they import (``Any``,
``Timestamp``). The classes of those are :data:`Any` and :data:`Timestamp` here: a field of a
bridge message takes only them, not ``any_pb2.Any``. The server adds what reflection describes
(:func:`add`).
"""

from __future__ import annotations

from typing import Any as _Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

POOL = descriptor_pool.DescriptorPool()


def add(serialized: bytes) -> None:
    """Add a serialized ``FileDescriptorProto`` to :data:`POOL`, once."""
    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
    try:
        POOL.FindFileByName(name)
    except KeyError:
        POOL.AddSerializedFile(serialized)


def message_class(full_name: str) -> _Any:
    """The class of a message of :data:`POOL`."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


add(any_pb2.DESCRIPTOR.serialized_pb)
add(timestamp_pb2.DESCRIPTOR.serialized_pb)
Any: type[any_pb2.Any] = message_class("google.protobuf.Any")
Timestamp: type[timestamp_pb2.Timestamp] = message_class("google.protobuf.Timestamp")
