"""The protocol core stays sans-IO: no module under dsm/core imports I/O, clocks or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).parents[2] / "src" / "dsm" / "core"
FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "sqlite3",
    "psycopg",
    "time",
    "random",
    "threading",
    "os",
    "dsm.storage",
    "dsm.sim",
    "dsm.node",
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_core_is_where_this_test_looks() -> None:
    # Without this, a moved test file or core would leave the check below with nothing to check.
    assert (CORE / "peer.py").is_file(), CORE


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    bad = {name for name in _imports(path) if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
