"""The `dsm` command, run as a real subprocess (the console script the README uses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.client import Client, ClientError
from procs import Proc, procs_fixture  # noqa: F401  (the `procs` fixture)

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


def test_put_with_an_empty_key_is_a_clean_error() -> None:
    result = run("put", "", "v", "--node", "127.0.0.1:9")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "key" in result.stderr and "empty" in result.stderr


@pytest.mark.slow
def test_keys_with_any_characters_through_the_cli(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("cli1", "127.0.0.1", tmp_path, [])
    procs.append(node)
    for key in ("line\nbreak", "50%ff off", "a/../b", "..", "ünï code?#&", " spaced "):
        put = run("put", key, "v:" + key, "--node", node.url)
        assert put.returncode == 0, put.stderr
        got = run("get", key, "--node", node.url)
        assert got.returncode == 0 and got.stdout == f"v:{key}\n", (key, got.stdout, got.stderr)
        deleted = run("delete", key, "--node", node.url)
        assert deleted.returncode == 0, deleted.stderr
        gone = run("get", key, "--node", node.url)
        assert gone.returncode == 1 and "not found" in gone.stderr


SECRETS = {
    "DSM_CLUSTER_SECRET": "cluster-secret-aaaaaaaaaaaa",
    "DSM_CLUSTER_SECRETS_ACCEPTED": "older-secret-bbbbbbbbbbbbb",
    "DSM_HTTP_TOKEN": "http-token-cccccccccccccccc",
}


def test_secrets_are_never_printed_by_dsm_config_or_in_a_node_log(tmp_path: Path) -> None:
    shown = run("config", env={**os.environ, **SECRETS, "COLUMNS": "400"})
    assert shown.returncode == 0, shown.stderr
    assert "<redacted>" in shown.stdout
    for secret in SECRETS.values():
        assert secret not in shown.stdout and secret[:12] not in shown.stdout
    bad = run("config", env={**os.environ, **SECRETS, "DSM_CLUSTER_SECRETS_ACCEPTED": "short"})
    assert bad.returncode != 0 and "short" not in bad.stderr  # the error names the field, not the value
    # A node's log at DEBUG, through a start, requests with and without the token, and a stop.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | SECRETS
    args = [*DSM, "node", "run", "--node-id", "s1", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    node = subprocess.Popen(
        [*args, "--data-dir", str(tmp_path / "s1"), "--log-level", "DEBUG"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        text=True,
    )
    try:
        assert node.stdout is not None
        url = "http://" + json.loads(node.stdout.readline())["http"]
        with Client(url, token=SECRETS["DSM_HTTP_TOKEN"]) as c:
            c.put("k", b"v")
        with Client(url, token="wrong-token") as c, pytest.raises(ClientError):
            c.get("k")
    finally:
        node.send_signal(signal.SIGTERM)
        _, log = node.communicate(timeout=30)
    assert "stopping" in log
    for secret in SECRETS.values():
        assert secret not in log
