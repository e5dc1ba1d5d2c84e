"""Regenerate the Python modules of the bridge protocol from ``bridge.proto``.

A developer's step (``python -m snakepit.grpc.generate``), needing the pinned ``grpcio-tools`` of
the ``dev`` extra; the generated modules are committed, and ``tests/test_grpc_protocol.py`` fails
when they no longer match the ``.proto``.

protoc writes ``bridge_pb2.py``, its stub ``bridge_pb2.pyi`` and ``bridge_pb2_grpc.py``. A step of
ours builds the messages in a private descriptor pool (:mod:`._descriptors`); two more make them
fully typed: the stub's message-as-mapping arguments get their key and value
types, and ``bridge_pb2_grpc.pyi`` is written from the service's descriptor (grpcio-tools writes
no stub for the service module).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the snakepit package
PROTO = Path("snakepit", "grpc", "bridge.proto")
GENERATED = ("bridge_pb2.py", "bridge_pb2.pyi", "bridge_pb2_grpc.py", "bridge_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Compile the ``.proto`` into ``out_dir`` (as ``out_dir/snakepit/grpc/...``)."""
    import grpc_tools
    from grpc_tools import protoc

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    descriptors = out_dir / "bridge.descriptors"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{includes}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--descriptor_set_out={descriptors}",
            str(ROOT / PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {PROTO}")
    package = out_dir / PROTO.parent
    module = package / "bridge_pb2.py"
    module.write_text(_private_pool(module.read_text()))
    stub = package / "bridge_pb2.pyi"
    stub.write_text(_typed_mappings(stub.read_text()))
    (package / "bridge_pb2_grpc.pyi").write_text(_service_stub(descriptors.read_bytes()))
    descriptors.unlink()
    return [package / name for name in GENERATED]


_IMPORTS = re.compile(r"^from google\.protobuf import (any|timestamp)_pb2 as \w+\n", re.MULTILINE)


def _private_pool(module: str) -> str:
    """Build the messages in :data:`snakepit.grpc._descriptors.POOL`, not protobuf's default
    pool, where Snakepit's own stubs put the same names (see :mod:`._descriptors`)."""
    module, imports = _IMPORTS.subn("", module)
    default = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if imports != 2 or module.count(default) != 1:
        raise RuntimeError("protoc's bridge_pb2.py is not shaped as snakepit.grpc.generate expects")
    return module.replace(
        default,
        "from snakepit.grpc import _descriptors  # snakepit: a private pool\n\nDESCRIPTOR = _descriptors.POOL.AddSerializedFile(",
    )


def _typed_mappings(stub: str) -> str:
    """A message argument may be given as a mapping of its fields: say of what."""
    stub = stub.replace("from typing import ClassVar as _ClassVar,", "from typing import Any as _Any, ClassVar as _ClassVar,", 1)
    return re.sub(r"\b_Mapping\]", "_Mapping[str, _Any]]", stub)


_KINDS = {  # (client streams, server streams) -> grpc's multi-callable, the servicer's argument, its result
    (False, False): ("UnaryUnaryMultiCallable", "request: {req}", "{resp} | _Awaitable[{resp}]"),
    (False, True): ("UnaryStreamMultiCallable", "request: {req}", "_Iterator[{resp}] | _AsyncIterator[{resp}]"),
    (True, False): (
        "StreamUnaryMultiCallable",
        "request_iterator: _Iterator[{req}] | _AsyncIterator[{req}]",
        "{resp} | _Awaitable[{resp}]",
    ),
    (True, True): (
        "StreamStreamMultiCallable",
        "request_iterator: _Iterator[{req}] | _AsyncIterator[{req}]",
        "_Iterator[{resp}] | _AsyncIterator[{resp}]",
    ),
}


def _service_stub(descriptor_set: bytes) -> str:
    """``bridge_pb2_grpc.pyi``: the stub, servicer and registration of each service, typed."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    [proto] = [f for f in files.file if f.name == PROTO.as_posix()]
    prefix = f".{proto.package}."

    def message(name: str) -> str:
        if not name.startswith(prefix):
            raise ValueError(f"a service of {PROTO} uses {name}, which is not one of its messages")
        return f"bridge_pb2.{name[len(prefix) :]}"

    lines = [
        f"# Written by snakepit.grpc.generate from {PROTO.as_posix()}. DO NOT EDIT!",
        '"""Client and server classes corresponding to protobuf-defined services (types)."""',
        "",
        "from collections.abc import AsyncIterator as _AsyncIterator, Awaitable as _Awaitable, Iterator as _Iterator",
        "from typing import Any as _Any",
        "",
        "import grpc",
        "",
        "from snakepit.grpc import bridge_pb2",
        "",
        "GRPC_GENERATED_VERSION: str",
        "GRPC_VERSION: str",
    ]
    for service in proto.service:
        methods = [(m, _KINDS[m.client_streaming, m.server_streaming]) for m in service.method]
        lines += [
            "",
            "",
            f"class {service.name}Stub:",
            "    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None: ...",
        ]
        lines += [f"    {m.name}: grpc.{kind[0]}[{message(m.input_type)}, {message(m.output_type)}]" for m, kind in methods]
        lines += ["", "", f"class {service.name}Servicer:"]
        for m, (_, argument, result) in methods:
            req, resp = message(m.input_type), message(m.output_type)
            lines.append(
                # context: grpc's, or grpc.aio's for a servicer of async methods
                f"    def {m.name}(self, {argument.format(req=req)}, context: _Any) -> {result.format(resp=resp)}: ..."
            )
        lines += [
            "",
            "",
            f"def add_{service.name}Servicer_to_server(servicer: {service.name}Servicer, server: grpc.Server | grpc.aio.Server) -> None: ...",
            "",
            "",
            f"class {service.name}:",
        ]
        for m, _ in methods:
            req, resp = message(m.input_type), message(m.output_type)
            request = f"request_iterator: _Iterator[{req}]" if m.client_streaming else f"request: {req}"
            returns = f"_Iterator[{resp}]" if m.server_streaming else resp
            lines += [
                "    @staticmethod",
                f"    def {m.name}(",
                f"        {request},",
                "        target: str,",
                "        options: _Any = (),",
                "        channel_credentials: grpc.ChannelCredentials | None = None,",
                "        call_credentials: grpc.CallCredentials | None = None,",
                "        insecure: bool = False,",
                "        compression: grpc.Compression | None = None,",
                "        wait_for_ready: bool | None = None,",
                "        timeout: float | None = None,",
                "        metadata: _Any = None,",
                f"    ) -> {returns}: ...",
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
