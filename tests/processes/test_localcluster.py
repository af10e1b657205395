"""`dsm cluster up/down` and the README's main job: local clusters of real node processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm.client import Client
from dsm.localcluster import ClusterError, LocalCluster

pytestmark = pytest.mark.usefixtures("loopback_hosts")

DSM = [sys.executable, "-m", "dsm.cli"]


def dsm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"COLUMNS": "200"}
    return subprocess.run([*DSM, *args], capture_output=True, text=True, timeout=120, env=env)


def wait_for(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def restarted(members: list[dict[str, object]]) -> bool:
    n2 = {m["id"]: m for m in members}["n2"]
    return n2["state"] == "alive" and isinstance(n2["incarnation"], int) and n2["incarnation"] >= 1


def test_cluster_up_kill_restart_down(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", env={"DSM_CLUSTER_SECRET": "local-cluster-test-secret"})
    cluster.up(3, peer_port=0, http_port=0)
    try:
        state = json.loads((tmp_path / "c" / "cluster.json").read_text())
        assert [n["node_id"] for n in state["nodes"]] == ["n1", "n2", "n3"]
        assert (tmp_path / "c" / "cluster.json").stat().st_mode & 0o077 == 0  # holds the secret
        clients = {n.node_id: Client(n.url) for n in cluster.nodes}
        clients["n1"].put("a", b"1")
        wait_for(lambda: all((c.get("a") or None) is not None for c in clients.values()))

        n2 = cluster.node("n2")
        old_pid, old_http = n2.pid, n2.http
        cluster.kill("n2")
        assert not LocalCluster.alive(n2)
        for i in range(20):
            clients["n3"].put(f"b{i}", b"x")
        cluster.start("n2")
        assert n2.pid != old_pid and n2.http == old_http  # same addresses after the restart
        wait_for(lambda: clients["n2"].list("b", limit=100).keys == sorted(f"b{i}" for i in range(20)))
        ids = {m["id"]: m for m in clients["n1"].members()}
        # The restart takes incarnation 1 (a refuted suspicion right after it, under load, takes it higher).
        wait_for(lambda: restarted(clients["n1"].members()))
        assert set(ids) == {"n1", "n2", "n3"}

        with pytest.raises(ClusterError, match="already runs"):
            LocalCluster(tmp_path / "c").up(2, peer_port=0, http_port=0)
        for c in clients.values():
            c.close()
    finally:
        stopped = cluster.down()
    assert sorted(stopped) == ["n1", "n2", "n3"]
    assert not LocalCluster.load(tmp_path / "c").running()
    for node_id in ("n1", "n2", "n3"):
        log = (tmp_path / "c" / node_id / "node.log").read_text()
        assert '"event": "stopped"' in log and "Traceback" not in log
        assert (tmp_path / "c" / node_id / "dsm.sqlite3").exists()


def test_a_reused_pid_is_not_killed(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cluster = LocalCluster(tmp_path)
        cluster.up(1, peer_port=0, http_port=0)
        cluster.down()
        cluster.nodes[0].pid = sleeper.pid  # as if the node's pid now belonged to another program
        cluster.save()
        assert LocalCluster.load(tmp_path).down() == []
        assert sleeper.poll() is None
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


@pytest.mark.slow
def test_cluster_commands(tmp_path: Path) -> None:
    where = str(tmp_path / "cli")
    up = dsm("cluster", "up", "--nodes", "2", "--dir", where, "--peer-port", "0", "--http-port", "0")
    try:
        assert up.returncode == 0, up.stderr
        assert "n1" in up.stdout and "n2" in up.stdout
        cluster = LocalCluster.load(where)
        assert len(cluster.running()) == 2
        url = cluster.nodes[1].url
        assert dsm("put", "k", "v", "--node", url).returncode == 0
        killed = dsm("cluster", "kill", "n1", "--dir", where)
        assert killed.returncode == 0 and not LocalCluster.alive(LocalCluster.load(where).node("n1"))
        show = dsm("cluster", "show", "--dir", where)
        assert show.returncode == 0 and "no" in show.stdout and "yes" in show.stdout
        started = dsm("cluster", "start", "n1", "--dir", where)
        assert started.returncode == 0, started.stderr
        url1 = LocalCluster.load(where).node("n1").url
        wait_for(lambda: dsm("get", "k", "--node", url1).stdout == "v\n", timeout=30)
        assert dsm("cluster", "start", "n1", "--dir", where).returncode == 1  # already runs
        assert dsm("cluster", "kill", "n9", "--dir", where).returncode == 1
    finally:
        down = dsm("cluster", "down", "--dir", where)
    assert down.returncode == 0 and "n1, n2" in down.stdout
    assert "no local cluster" in dsm("cluster", "down", "--dir", str(tmp_path / "nothing")).stderr
    overlap = dsm("cluster", "up", "-n", "5", "--dir", where, "--peer-port", "7400", "--http-port", "7402")
    assert overlap.returncode == 1 and "overlaps" in overlap.stderr


@pytest.mark.slow
def test_a_tls_cluster_from_the_command_line(tmp_path: Path) -> None:
    where = str(tmp_path / "tls")
    up = dsm("cluster", "up", "--nodes", "2", "--dir", where, "--peer-port", "0", "--http-port", "0", "--tls")
    try:
        assert up.returncode == 0, up.stderr
        cluster = LocalCluster.load(where)
        assert cluster.tls and cluster.ca_file is not None and "--ca-file" in up.stdout
        n1, n2 = cluster.nodes
        assert n1.url.startswith("https://")
        # The API is HTTPS, checked against the cluster CA; the nodes replicate over mutual TLS.
        assert dsm("put", "k", "over-tls", "--node", n1.url, "--ca-file", cluster.ca_file).returncode == 0
        wait_for(lambda: dsm("get", "k", "--node", n2.url, "--ca-file", cluster.ca_file).stdout == "over-tls\n")
        refused = dsm("get", "k", "--node", n2.url)  # without the cluster CA the certificate does not verify
        assert refused.returncode == 1 and "certificate" in refused.stderr.lower()
        assert (Path(where) / "tls" / "n1-key.pem").stat().st_mode & 0o077 == 0  # keys: owner only
    finally:
        down = dsm("cluster", "down", "--dir", where)
    assert down.returncode == 0


@pytest.mark.slow
def test_the_main_job_demo(tmp_path: Path) -> None:
    result = dsm("demo", "--data-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("b'hello, cluster'") >= 6  # the write and its read on each of the 5 nodes
    assert "not seen" not in out
    assert "n3 holds all 200 keys it missed" in out
    assert "-> b'order 199'" in out
    assert "stopped n1, n2, n3, n4, n5" in out
    assert not LocalCluster.load(tmp_path / "demo").running()
