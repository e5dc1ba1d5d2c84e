"""Regenerate the Python modules of the bridge protocol from ``bridge.proto``.

A developer's step (``python -m snakepit.grpc.generate``), needing the pinned ``grpcio-tools`` of
the ``dev`` extra; the generated modules are committed, and ``tests/test_grpc_protocol.py`` fails
when they no longer match the ``.proto``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the snakepit package
PROTO = Path("snakepit", "grpc", "bridge.proto")
GENERATED = ("bridge_pb2.py", "bridge_pb2.pyi", "bridge_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile the ``.proto`` into ``out_dir`` (as ``out_dir/snakepit/grpc/...``)."""
    import grpc_tools
    from grpc_tools import protoc

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{includes}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {PROTO}")
    return [out_dir / PROTO.parent / name for name in GENERATED]


def main() -> int:
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
