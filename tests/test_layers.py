"""The floors of the package, as the README's *Layout* draws them, checked on its imports.

Read from the source (every import, at module level, in functions and under TYPE_CHECKING), so
a new import that crosses a floor fails here, whether or not a test runs it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "snakepit"

# The bottom floor: what both sides of a worker's pipes use.
SHARED = (
    "snakepit._errors",
    "snakepit._remote",
    "snakepit._adapter",
    "snakepit._streaming",
    "snakepit._protocol",
    "snakepit._encoding",
    "snakepit.telemetry",
)
ENGINE = ("snakepit._pool", "snakepit._backends", "snakepit._hosting", "snakepit.grpc")
WORKER_SIDE = ("snakepit._hosting", "snakepit._backends.process.child")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "pb2" in path.name:
            continue
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, whether at module level outside TYPE_CHECKING) for each snakepit import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)) or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            ):
                visit(child, False)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                name = ".".join([*base, *([child.module] if child.module else [])])
                for alias in child.names:
                    full = f"{name}.{alias.name}"
                    found.append((full if full in MODULES else name, top))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            else:
                visit(child, top)

    visit(tree, True)
    return [(name, top) for name, top in found if name == "snakepit" or name.startswith("snakepit.")]


def _under(module: str, *packages: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _crossings(source: tuple[str, ...], target: tuple[str, ...], *, allowed: set[tuple[str, str]] = frozenset()) -> list:
    return [
        (module, imported)
        for module in MODULES
        if _under(module, *source)
        for imported, _ in _imports(module)
        if _under(imported, *target) and (module, imported) not in allowed
    ]


def test_the_pool_and_the_backends_never_import_each_other():
    assert _crossings(("snakepit._pool",), ("snakepit._backends", "snakepit._hosting")) == []
    assert _crossings(("snakepit._backends",), ("snakepit._pool",)) == []


def test_the_seam_stands_below_both():
    assert _crossings(("snakepit._seam",), ENGINE) == []


def test_the_shared_floor_imports_nothing_above_it():
    assert _crossings(SHARED, ("snakepit._seam", *ENGINE, "snakepit._observe", "snakepit._courier")) == []


def test_the_grpc_facade_uses_the_public_api_and_the_seam():
    assert _crossings(("snakepit.grpc",), ("snakepit._pool", "snakepit._backends", "snakepit._hosting")) == []


def test_the_pool_reaches_up_to_the_facade_once_lazily():
    """``Pool.serve`` is the one upward reference: a lazy import of the public package."""
    upward = [
        (module, imported, top)
        for module in MODULES
        if _under(module, "snakepit._pool", "snakepit._seam", "snakepit._backends")
        for imported, top in _imports(module)
        if _under(imported, "snakepit.grpc")
    ]
    assert upward == [("snakepit._pool.pool", "snakepit.grpc", False)]


def test_owner_code_never_imports_worker_side_code():
    """Except the Ray actor's module, which Ray imports in the actor; its worker-side imports
    are inside its methods, so the owner, which imports it for the class, loads none."""
    owner = ("snakepit._pool", "snakepit._seam", "snakepit.grpc", "snakepit._backends.process", "snakepit._backends.ray")
    crossing = [
        (module, imported, top)
        for module in MODULES
        if _under(module, *owner) and not _under(module, *WORKER_SIDE)
        for imported, top in _imports(module)
        if _under(imported, *WORKER_SIDE)
    ]
    assert all(module == "snakepit._backends.ray.actor" and not top for module, _, top in crossing), crossing


def test_every_module_says_what_it_is_for():
    missing = [module for module, path in MODULES.items() if ast.get_docstring(ast.parse(path.read_text())) is None]
    assert missing == []


def _loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('snakepit')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    return set(out.split())


ENGINE_MODULES = {
    "snakepit._pool",
    "snakepit._pool.dispatcher",
    "snakepit._pool.supervisor",
    "snakepit._pool.mapping",
    "snakepit._pool.exchange",
    "snakepit._seam.reactor",
    "snakepit._backends",
}


def test_a_remote_client_carries_no_engine():
    pytest.importorskip("grpc")
    loaded = _loaded_by("from snakepit.grpc import Client")
    assert "snakepit.grpc._client" in loaded
    assert not {m for m in loaded if m in ENGINE_MODULES or m.startswith(("snakepit._pool.", "snakepit._backends."))}


def test_a_worker_loads_no_owner_code():
    loaded = _loaded_by("import snakepit._backends.process.child.worker_process")
    assert not {m for m in loaded if _under(m, "snakepit._pool", "snakepit._seam", "snakepit.grpc")}, loaded
