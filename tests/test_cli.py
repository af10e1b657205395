"""The `dsm` command, run as a real subprocess (the console script the README uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DSM = [sys.executable, "-m", "dsm.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DSM, *args], capture_output=True, text=True, timeout=120, env=env)


def test_demo_writes_reopens_and_reads_back(tmp_path: Path) -> None:
    result = run("demo", "--single", "--data-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hello, world" in out and "forty-two" in out and "reopen from disk" in out
    assert "keys stored (tombstones included): 2003" in out
    assert (tmp_path / "demo" / "dsm.sqlite3").exists()


def test_demo_reports_storage_errors_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("demo", "--single", "--data-dir", str(blocker / "sub"))
    assert result.returncode == 1
    assert "StorageUnavailableError" in result.stderr and "Traceback" not in result.stderr


def test_config_shows_effective_values_and_rejects_bad_ones(tmp_path: Path) -> None:
    env = {**os.environ, "DSM_GOSSIP_FANOUT": "7", "COLUMNS": "200"}
    result = run("config", env=env)
    assert result.returncode == 0, result.stderr
    assert "gossip_fanout" in result.stdout and "7" in result.stdout
    bad = run("config", env={**os.environ, "DSM_GOSSIP_FANOUT": "0"})
    assert bad.returncode != 0 and "gossip_fanout" in bad.stderr and "Traceback" not in bad.stderr


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0 and result.stdout.strip()
