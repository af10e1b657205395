"""A real network partition between two regions: five `dsm node run` processes inside a throwaway network
namespace (each on its own 127.0.0.x address of the namespace's loopback, which its outgoing connections also
leave from), region a = 3 nodes, region b = 2;
nftables drops every packet between the regions (TCP connects hang, as across a real partition) while
both sides keep running. Region a keeps taking region_quorum writes; each_region_quorum and quorum fail
cleanly where they cannot be met; region b keeps taking its own writes; after the partition heals every
write, including those whose level failed, is on every node.

Needs root and the `ip` and `nft` commands (`apt-get install nftables`); skipped without them, a failure
under DSM_TEST_STRICT=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import Proc, eventually
from support import skip_or_fail

A = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
B = ["127.0.0.4", "127.0.0.5"]
ENV = {"DSM_CONSISTENCY_TIMEOUT_MS": "1000"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        skip_or_fail("network namespaces need root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            skip_or_fail(f"the {tool!r} command is missing (apt-get install iproute2 nftables)")
    name = f"dsm-part-{os.getpid()}"
    made = run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        skip_or_fail(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def nodes(netns: str, tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    wrapper = ["ip", "netns", "exec", netns]
    try:
        for i, host in enumerate(A + B):
            region = "a" if host in A else "b"
            bootstrap = [started[0].listen] if started else []
            env = {**ENV, "DSM_REGION": region}
            started.append(Proc(f"{region}{i}", host, tmp_path, bootstrap, env=env, wrapper=wrapper))
        yield started
    finally:
        for p in started:
            if p.proc.poll() is None:
                p.stop()


def dsm(netns: str, node: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    """The `dsm` command run inside the namespace against `node`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_NODE_URL": node.url}
    command = ["ip", "netns", "exec", netns, sys.executable, "-m", "dsm.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def partition(netns: str, left: list[str], right: list[str], http_ports: list[int]) -> None:
    """Drops every packet between the two address groups, except the test's own HTTP requests (the `dsm`
    command connects from whatever address the kernel picks; nodes connect from their own address)."""
    nft = ["ip", "netns", "exec", netns, "nft"]
    run(*nft, "add", "table", "inet", "dsmpart")
    run(*nft, "add chain inet dsmpart in { type filter hook input priority 0; policy accept; }")
    ports = ", ".join(str(p) for p in http_ports)
    run(*nft, f"add rule inet dsmpart in tcp dport {{ {ports} }} accept")
    run(*nft, f"add rule inet dsmpart in tcp sport {{ {ports} }} accept")
    for src, dst in ((left, right), (right, left)):
        rule = f"add rule inet dsmpart in ip saddr {{ {', '.join(src)} }} ip daddr {{ {', '.join(dst)} }} drop"
        run(*nft, rule)


def heal(netns: str) -> None:
    run("ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "dsmpart")


@pytest.mark.slow
def test_a_partition_between_regions(netns: str, nodes: list[Proc]) -> None:
    a0, a1, a2, b0, b1 = nodes

    def alive(node: Proc) -> int:
        out = dsm(netns, node, "members", "-o", "raw").stdout.splitlines()  # one JSON object per line
        return sum(1 for line in out if json.loads(line)["state"] == "alive")

    eventually(lambda: all(alive(n) == 5 for n in (a0, b1)), timeout=30)
    assert dsm(netns, a0, "put", "before", "0", "--consistency", "all").returncode == 0

    partition(netns, A, B, [int(n.http.rpartition(":")[2]) for n in nodes])
    try:
        # Region a: its own majority is there, every region's majority is not.
        assert dsm(netns, a0, "put", "in-a", "1", "--consistency", "region_quorum").returncode == 0
        got = dsm(netns, a1, "get", "in-a", "--consistency", "region_quorum")
        assert got.returncode == 0 and got.stdout == "1\n"
        each = dsm(netns, a2, "put", "each", "1", "--consistency", "each_region_quorum")
        assert each.returncode == 1 and "consistency_unmet" in each.stderr and "b: 0 of 2" in each.stderr
        assert dsm(netns, a0, "put", "q-a", "1", "--consistency", "quorum").returncode == 0  # 3 of 5
        # Region b keeps running: its own writes, its own region_quorum (2 of 2); not a quorum (2 of 5).
        assert dsm(netns, b0, "put", "in-b", "1", "--consistency", "region_quorum").returncode == 0
        q_b = dsm(netns, b1, "put", "q-b", "1", "--consistency", "quorum")
        assert q_b.returncode == 1 and "consistency_unmet" in q_b.stderr
        assert dsm(netns, b1, "get", "in-a").returncode == 1  # not across the partition
    finally:
        heal(netns)

    def everywhere(key: str) -> bool:
        return all(dsm(netns, n, "get", key).returncode == 0 for n in nodes)

    # Nothing rolled back, nothing lost: the writes of both sides, those whose level failed included.
    for key in ("in-a", "each", "q-a", "in-b", "q-b", "before"):
        eventually(lambda key=key: everywhere(key), timeout=60)
