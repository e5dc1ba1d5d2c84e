"""Type completeness of the public API: ``pyright --verifytypes snakepit`` (basedpyright), which
must reach ``--minimum`` percent (95 by default). Part of ``make lint``.

verifytypes reads the package as a user gets it, installed: an editable install is a path hook
it cannot follow, so a copy is installed into a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minimum", type=float, default=95.0, help="the lowest completeness accepted, in percent")
    parser.add_argument("--show", action="store_true", help="list the public symbols whose type is not known")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, str(ROOT)],
            check=True,
        )
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("basedpyright")),
                "--pythonpath",
                sys.executable,
                "--verifytypes",
                "snakepit",
                "--ignoreexternal",
                "--outputjson",
            ],
            capture_output=True,
            text=True,
            cwd=target,
            env={**os.environ, "PYTHONPATH": target},
        )
    report = json.loads(done.stdout)["typeCompleteness"]
    score = 100 * report["completenessScore"]
    counts = report["exportedSymbolCounts"]
    print(
        f"type completeness of snakepit: {score:.1f}% ({counts['withKnownType']} public symbols known, "
        f"{counts['withAmbiguousType']} ambiguous, {counts['withUnknownType']} unknown; at least {options.minimum:g}% required)"
    )
    if options.show:
        for symbol in report["symbols"]:
            if symbol["isExported"] and not symbol["isTypeKnown"]:
                print("  ", symbol["name"])
    return 0 if score >= options.minimum else 1


if __name__ == "__main__":
    sys.exit(main())
