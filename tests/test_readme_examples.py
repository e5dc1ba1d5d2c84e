"""The README's runnable examples (code blocks opening with ``# example: NAME``) run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = dict(re.findall(r"```python\n# example: (\S+)\n(.*?)```", README.read_text(), re.DOTALL))


def test_the_readme_has_its_examples():
    assert {"functions", "futures", "executor", "exceptions", "metrics", "shared"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_runs(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(EXAMPLES[name])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[: len(OUTPUT.get(name, []))] == OUTPUT.get(name, [])
    assert CONTAINS.get(name, "") in done.stdout


OUTPUT = {  # what the examples print, as their comments say
    "functions": ["2.5", "[1.0, 2.0]", "[3, 2, 1]"],
    "futures": ["[0, 1, 4, 9, 16]"],
    "executor": ["27", "[0, 1, 8, 27, 64]", "ValueError from the worker: True", "64"],
    "exceptions": ["2 /no/such/file"],
    "shared": ["(1024, 1024) False", "10 False"],
    "encoded": ['application/json b\'{"number":0,"is_last":false}\'', 'application/json b\'{"number":1,"is_last":true}\''],
}
CONTAINS = {"metrics": 'snakepit_calls_total{outcome="ok",pool="showcase",tool="add"} 1.0'}
