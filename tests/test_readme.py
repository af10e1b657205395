"""The README's library example runs as written (so the README cannot drift from the code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Ada" in result.stdout
    assert (tmp_path / "data" / "dsm.sqlite3").exists()


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    assert "./run demo" in text and "./run test" in text
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "./run test" in ci and "DSM_TEST_STRICT=1" in ci
