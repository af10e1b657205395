"""`dsm cluster up` starts the nodes in parallel (issue 20, section 5): the first alone, then every other one
at once, forked from one process that imported the node's code once (`dsm.localcluster._Zygote`). The
nodes so started are real `dsm node run` nodes in every way the cluster commands use: they join, they are
recognized by pid (their log is their standard output), killed, restarted and stopped. The time 50 nodes
take is measured in bench/cli_bench.py, not here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsm.cli import main
from dsm.client import Client
from dsm.localcluster import LocalCluster
from procs import eventually

pytestmark = pytest.mark.usefixtures("loopback_hosts")

COUNT = 8


def alive_seen_by(url: str) -> int:
    with Client(url) as c:
        return sum(1 for m in c.members() if m["state"] == "alive")


def test_nodes_started_at_once_join_and_are_managed_like_any(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", env={"DSM_CLUSTER_SECRET": "parallel-cluster-test-secret"})
    cluster.up(COUNT, peer_port=0, http_port=0)
    try:
        assert all(LocalCluster.alive(n) for n in cluster.nodes)
        assert len({n.pid for n in cluster.nodes}) == COUNT
        # Each forked node runs in a session of its own and writes to its own log.
        for n in cluster.nodes[1:]:
            assert os.getsid(n.pid) == n.pid
            assert os.readlink(f"/proc/{n.pid}/fd/1") == str(Path(n.log).resolve())
        for n in cluster.nodes:
            eventually(lambda n=n: alive_seen_by(n.url) == COUNT)  # type: ignore[misc]
        with Client(cluster.nodes[-1].url) as c:
            c.put("k", b"v")
        with Client(cluster.nodes[0].url) as c:
            eventually(lambda: (c.get("k") or None) is not None)
        shown = CliRunner().invoke(main, ["cluster", "show", "--dir", str(tmp_path / "c"), "-o", "json"])
        listed = json.loads(shown.stdout)
        assert [n["node_id"] for n in listed] == [n.node_id for n in cluster.nodes]
        assert all(n["running"] for n in listed) and listed[0]["url"] == cluster.nodes[0].url
        # A pid that is no longer the node's (the node killed) is not taken for it; restart, stop, restart all.
        victim = cluster.node("n5")
        cluster.kill("n5")
        assert not LocalCluster.alive(victim)
        cluster.start("n5")
        eventually(lambda: alive_seen_by(cluster.nodes[0].url) == COUNT)
        shown = CliRunner().invoke(main, ["cluster", "show", "--dir", str(tmp_path / "c"), "-o", "raw"])
        row = json.loads(shown.stdout.splitlines()[4])  # one object per line: n5 restarted, its new pid
        assert row["node_id"] == "n5" and row["pid"] == victim.pid != listed[4]["pid"] and row["running"]
        stopped = LocalCluster.load(tmp_path / "c").down()
        assert sorted(stopped) == sorted(n.node_id for n in cluster.nodes)
        assert not any(LocalCluster.alive(n) for n in cluster.nodes)
        again = LocalCluster.load(tmp_path / "c")
        assert sorted(again.start_all()) == sorted(n.node_id for n in cluster.nodes)
        eventually(lambda: alive_seen_by(again.nodes[2].url) == COUNT)
        cluster = again
    finally:
        LocalCluster.load(tmp_path / "c").down()
