"""The documentation's runnable examples (code blocks opening with ``# example: NAME``, in the
README and in ``docs/``) run as written; and the README, PyPI's page, links only to what exists
wherever it is read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"```python\n# example: (\S+)\n(.*?)```", re.DOTALL)
EXAMPLES = {name: code for page in PAGES for name, code in _BLOCK.findall(page.read_text())}


def test_the_docs_have_their_examples():
    found = [name for page in PAGES for name, _ in _BLOCK.findall(page.read_text())]
    assert len(found) == len(set(found)), "two examples share a name"
    assert {"getting-started", "functions", "futures", "executor", "exceptions", "metrics", "shared", "encoded"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_runs(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(EXAMPLES[name])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[: len(OUTPUT.get(name, []))] == OUTPUT.get(name, [])
    assert CONTAINS.get(name, "") in done.stdout


OUTPUT = {  # what the examples print, as their comments say
    "getting-started": ["['count', 'greet']"],
    "functions": ["2.5", "[1.0, 2.0]", "[3, 2, 1]"],
    "futures": ["[0, 1, 4, 9, 16]"],
    "executor": ["27", "[0, 1, 8, 27, 64]", "ValueError from the worker: True", "64"],
    "exceptions": ["2 /no/such/file"],
    "shared": ["(1024, 1024) False", "10 False"],
    "encoded": ['application/json b\'{"number":0,"is_last":false}\'', 'application/json b\'{"number":1,"is_last":true}\''],
}
CONTAINS = {"metrics": 'snakepit_calls_total{outcome="ok",pool="showcase",tool="add"} 1.0'}


def test_the_readme_links_only_to_what_pypi_can_reach():
    """PyPI renders the README away from the repository: a relative link or image would be
    broken there, so every link is absolute (the guides are named by their paths instead)."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]*)\)", text) + re.findall(r'src="([^"]*)"', text)
    relative = [t for t in targets if not re.match(r"https?://", t)]
    assert relative == []
