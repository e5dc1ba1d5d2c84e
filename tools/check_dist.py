"""Check the built distributions in a folder (``make package``): the sdist carries every file
of the checkout (tests and their support modules, benchmarks, docs, examples, the Makefile), so
that its tests run from it; the wheel carries the package with its typing and protocol files and
nothing else.

``python tools/check_dist.py DIST_DIR``; without a git checkout (an unpacked sdist) the sdist's
own file list is the reference.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

# What a checkout has that an sdist need not carry: CI's entry point and git's own files.
_CHECKOUT_ONLY = (".ci/", ".github/", ".gitignore", ".gitattributes")
_WHEEL_MUST_HAVE = ("snakepit/__init__.py", "snakepit/py.typed", "snakepit/grpc/bridge.proto", "snakepit/grpc/bridge_pb2.pyi")


def tracked_files(root: Path) -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {name for name in out.decode().split("\0") if name and not name.startswith(_CHECKOUT_ONLY)}


def main(argv: list[str]) -> int:
    dist = Path(argv[1] if len(argv) > 1 else "dist")
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"{dist}: expected one sdist and one wheel, found {[p.name for p in sdists + wheels]}")
        return 1
    problems = []
    with tarfile.open(sdists[0]) as tar:
        names = tar.getnames()
    top = names[0].split("/", 1)[0]
    in_sdist = {name.split("/", 1)[1] for name in names if "/" in name}
    expected = tracked_files(Path(__file__).resolve().parent.parent)
    if expected is not None:
        missing = sorted(expected - in_sdist)
        if missing:
            problems.append(f"the sdist {sdists[0].name} lacks {len(missing)} files of the checkout: {', '.join(missing[:20])}")
    with zipfile.ZipFile(wheels[0]) as whl:
        in_wheel = set(whl.namelist())
    for name in _WHEEL_MUST_HAVE:
        if name not in in_wheel:
            problems.append(f"the wheel {wheels[0].name} lacks {name}")
    strays = sorted(
        {name.split("/", 1)[0] for name in in_wheel}
        - {"snakepit"}
        - {n for n in (n.split("/", 1)[0] for n in in_wheel) if n.endswith(".dist-info")}
    )
    if strays:
        problems.append(f"the wheel {wheels[0].name} carries more than the package: {', '.join(strays)}")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{top}: the sdist has every file of the checkout ({len(in_sdist)}), the wheel the package ({len(in_wheel)} files)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
