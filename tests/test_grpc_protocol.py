"""The bridge protocol's files: the committed Python modules match the .proto, and the facade
stays out of ``import snakepit``."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("grpc_tools", reason="the dev extra's grpcio-tools")

from snakepit.grpc import generate


def test_the_generated_modules_are_those_of_the_proto(tmp_path):
    for fresh in generate.generate(tmp_path):
        committed = generate.ROOT / generate.PROTO.parent / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed.name} is stale: run python -m snakepit.grpc.generate"


def test_import_snakepit_does_not_import_grpc():
    probe = (
        "import snakepit, sys; print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'google.protobuf'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
