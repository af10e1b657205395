"""`dsm cluster up` on a directory that already holds a cluster: it starts that cluster again as recorded
(nodes, addresses, secret, TLS, data), refuses flags that disagree with it, and starts a new one only when
asked (`--recreate`). Before, it silently rewrote cluster.json (TLS off, default ports, a new secret) over
stores that remembered the old cluster. Real `dsm` commands in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm.localcluster import ClusterError, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback_hosts")]

DSM = [sys.executable, "-m", "dsm.cli"]


def dsm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"COLUMNS": "200"}
    return subprocess.run([*DSM, *args], capture_output=True, text=True, timeout=120, env=env)


def recorded(where: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((Path(where) / "cluster.json").read_text())
    return state


def test_cluster_up_again_keeps_the_recorded_cluster(tmp_path: Path) -> None:
    where = str(tmp_path / "c")
    try:
        # One node: TLS is recorded and used (HTTPS), without a TLS join between processes on a busy machine.
        first = dsm("cluster", "up", "-n", "1", "--dir", where, "--peer-port", "0", "--http-port", "0", "--tls")
        assert first.returncode == 0, first.stderr
        before = recorded(where)
        ca = LocalCluster.load(where).ca_file
        assert ca is not None
        url = LocalCluster.load(where).nodes[0].url
        assert dsm("put", "k", "kept", "--node", url, "--ca-file", ca).returncode == 0
        assert dsm("cluster", "down", "--dir", where).returncode == 0

        # As it was: same nodes, addresses, secret and TLS, and the data is there.
        again = dsm("cluster", "up", "--dir", where)
        assert again.returncode == 0, again.stderr
        assert "started again as recorded" in again.stdout and "TLS on" in again.stdout
        after = recorded(where)
        assert after["tls"] is True and after["env"] == before["env"]
        strip = ("pid", "waiting")
        assert [{k: v for k, v in n.items() if k not in strip} for n in after["nodes"]] == [
            {k: v for k, v in n.items() if k not in strip} for n in before["nodes"]
        ]
        got = dsm("get", "k", "--node", url, "--ca-file", ca)
        assert got.returncode == 0 and got.stdout == "kept\n", got.stderr

        # Running: nothing to start; a flag that disagrees is refused and names what differs.
        running = dsm("cluster", "up", "--dir", where)
        assert running.returncode == 1 and "already runs n1" in running.stderr
        assert dsm("cluster", "down", "--dir", where).returncode == 0
        for flags, named in (
            (["-n", "3"], "--nodes 3 (recorded: 1)"),
            (["--host", "127.0.0.2"], "--host 127.0.0.2 (recorded: 127.0.0.1)"),
            (["--peer-port", "7400"], "--peer-port 7400"),
            (["--secret", "another-secret-0000000001"], "--secret (not the recorded one)"),
        ):
            refused = dsm("cluster", "up", "--dir", where, *flags)
            assert refused.returncode == 1 and named in refused.stderr, refused.stderr
            assert "--recreate" in refused.stderr and "another-secret" not in refused.stderr
        assert recorded(where) == after | {"nodes": recorded(where)["nodes"]}  # unchanged but the pids
        assert not LocalCluster.load(where).running()

        # The library refuses the directory too (the demo's --data-dir goes through it).
        with pytest.raises(ClusterError, match="already holds a cluster"):
            LocalCluster(where).up(1, peer_port=0, http_port=0)

        # Asked for: a new cluster, the old data gone.
        new = dsm("cluster", "up", "--dir", where, "--recreate", "-n", "2", "--peer-port", "0", "--http-port", "0")
        assert new.returncode == 0, new.stderr
        fresh = recorded(where)
        assert fresh["tls"] is False and len(fresh["nodes"]) == 2 and fresh["env"] != before["env"]
        assert not (Path(where) / "tls").exists()
        gone = dsm("get", "k", "--node", LocalCluster.load(where).nodes[0].url)
        assert gone.returncode == 1 and "k: not found" in gone.stderr
    finally:
        if (Path(where) / "cluster.json").exists():
            LocalCluster.load(where).down()
