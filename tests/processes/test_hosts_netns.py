"""Three `dsm node run` processes as three hosts on one LAN, the way a cluster of machines runs: each node in
its own network namespace with its own address on its own interface (`eth0`, 10.251.N.1-3/24) and a default
route, the interfaces joined by veth pairs on a bridge that lives in a fourth namespace (the switch). The
test itself is a client on the same LAN (a veth from its namespace to the bridge, 10.251.N.254), so it talks
to the nodes through the public client over the LAN; nothing goes over loopback.

- join: every node is started with the same bootstrap list (the three LAN addresses, as in deploy/), at once;
  all become ready and see the others alive at their LAN addresses;
- replicate: a write on one host is read on the others;
- partition with nftables (each host's own firewall drops the other side's addresses, both ways) and heal:
  writes on both sides are on every node afterwards;
- a node moved to a new address: stopped, its namespace given a new IP (and its route again), restarted with
  the same data directory and id at the new address and no bootstrap (it rejoins through the members it
  saved): the others learn the new address (they list it), it catches up with a write made while it was
  away, and writes flow both ways again.

Needs root and the `ip` and `nft` commands (`apt-get install iproute2 nftables`); skipped without them, a
failure under DSM_TEST_STRICT=1. Every namespace and link the fixture made is removed, even on failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from procs import Proc, eventually, holds
from support import skip_or_fail

PORT = 7400  # every host listens on the same node-to-node port, as machines do
NODES = 3


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Lan:
    """The namespaces of one test: `hosts[i]` is node i's, `switch` holds the bridge; `subnet` is the
    first three octets of the LAN's /24."""

    switch: str
    hosts: list[str]
    subnet: str
    client_link: str

    def addr(self, octet: int) -> str:
        return f"{self.subnet}.{octet}"

    def set_address(self, host: int, octet: int, old: int | None = None) -> None:
        """Gives host `host`'s eth0 the address .`octet` (removing .`old`) and its default route."""
        ns = self.hosts[host]
        if old is not None:
            run("ip", "-n", ns, "addr", "del", f"{self.addr(old)}/24", "dev", "eth0")
        run("ip", "-n", ns, "addr", "add", f"{self.addr(octet)}/24", "dev", "eth0")
        run("ip", "-n", ns, "route", "replace", "default", "via", self.addr(254), "dev", "eth0")


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0:
        skip_or_fail("network namespaces need root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            skip_or_fail(f"the {tool!r} command is missing (apt-get install iproute2 nftables)")
    tag = f"{os.getpid() % 100000}"
    switch = f"dsm-sw-{tag}"
    hosts = [f"dsm-h{i}-{tag}" for i in range(NODES)]
    client_link = f"dsmc{tag}"  # in the test's own namespace: at most 15 characters
    lan = Lan(switch, hosts, f"10.251.{os.getpid() % 250}", client_link)
    made: list[str] = []
    try:
        for ns in (switch, *hosts):
            added = run("ip", "netns", "add", ns, check=False)
            if added.returncode != 0:
                skip_or_fail(f"cannot create a network namespace: {added.stderr.strip()}")
            made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for i, ns in enumerate(hosts):
            # One cable per host: `eth0` in the host's namespace, `port<i>` on the switch's bridge.
            run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"port{i}", "netns", switch)
            run("ip", "-n", switch, "link", "set", f"port{i}", "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            lan.set_address(i, i + 1)
        # The test's own cable to the switch: it is the LAN's client (and the hosts' gateway address).
        run("ip", "link", "add", client_link, "type", "veth", "peer", "name", "uplink", "netns", switch)
        run("ip", "-n", switch, "link", "set", "uplink", "master", "br0", "up")
        run("ip", "addr", "add", f"{lan.addr(254)}/24", "dev", client_link)
        run("ip", "link", "set", client_link, "up")
        yield lan
    finally:
        run("ip", "link", "del", client_link, check=False)
        for ns in made:
            run("ip", "netns", "del", ns, check=False)


def start(lan: Lan, i: int, octet: int, data: Path, bootstrap: list[str]) -> Proc:
    """Node `n<i>` on host `i`, listening (peers and HTTP) on the host's LAN address .`octet`; returns once
    it printed its first line (`waiting` while it reaches no member, or `ready`)."""
    wrapper = ["ip", "netns", "exec", lan.hosts[i]]
    return Proc(f"n{i}", lan.addr(octet), data, bootstrap, port=PORT, wrapper=wrapper, until="any")


def members(p: Proc) -> dict[str, tuple[str, str]]:
    """Node id -> (address, state), as `p` sees its members."""
    return {m["id"]: (m["addr"], m["state"]) for m in p.client.members()}


def partition(lan: Lan, left: list[int], right: list[int]) -> None:
    """Each host's own firewall drops every packet to and from the other side's hosts (the client stays)."""
    for side, other in ((left, right), (right, left)):
        addrs = ", ".join(lan.addr(i + 1) for i in other)
        for i in side:
            nft = ["ip", "netns", "exec", lan.hosts[i], "nft"]
            run(*nft, "add", "table", "inet", "dsmpart")
            run(*nft, "add chain inet dsmpart in { type filter hook input priority 0; policy accept; }")
            run(*nft, "add chain inet dsmpart out { type filter hook output priority 0; policy accept; }")
            run(*nft, f"add rule inet dsmpart in ip saddr {{ {addrs} }} drop")
            run(*nft, f"add rule inet dsmpart out ip daddr {{ {addrs} }} drop")


def heal(lan: Lan, hosts: list[int]) -> None:
    for i in hosts:
        run("ip", "netns", "exec", lan.hosts[i], "nft", "delete", "table", "inet", "dsmpart")


@pytest.mark.slow
def test_three_hosts_on_a_lan(lan: Lan, tmp_path: Path) -> None:
    addrs = [f"{lan.addr(i + 1)}:{PORT}" for i in range(NODES)]
    nodes: list[Proc] = []
    try:
        # Join: the same bootstrap list everywhere, every node started before any is ready.
        for i in range(NODES):
            nodes.append(start(lan, i, i + 1, tmp_path, addrs))
        for i, p in enumerate(nodes):
            p.wait_ready()
            assert p.listen == addrs[i] and p.http.startswith(lan.addr(i + 1) + ":")
        everyone = {f"n{i}": (addrs[i], "alive") for i in range(NODES)}
        eventually(lambda: all(members(p) == everyone for p in nodes), timeout=20)

        # Replicate.
        n0, n1, n2 = nodes
        n0.client.put("first", b"1")
        eventually(lambda: all(holds(p, "first", b"1") for p in nodes), timeout=20)

        # Partition {n0, n1} | {n2}: both sides keep taking writes; n2 stops hearing from the others.
        partition(lan, [0, 1], [2])
        try:
            n0.client.put("left", b"L")
            n2.client.put("right", b"R")
            eventually(lambda: members(n2)["n0"][1] != "alive" and members(n0)["n2"][1] != "alive", timeout=30)
            assert n2.client.get("left") is None and n0.client.get("right") is None
            assert holds(n1, "left", b"L")  # within a side, replication goes on
        finally:
            heal(lan, [0, 1, 2])
        eventually(lambda: all(holds(p, "left", b"L") and holds(p, "right", b"R") for p in nodes), timeout=40)
        eventually(lambda: all(members(p) == everyone for p in nodes), timeout=30)

        # Move n2 to a new address: stop it, renumber its host, restart it with its data and id, no bootstrap.
        assert n2.stop(signal.SIGTERM) == 0
        n0.client.put("while-away", b"W")
        lan.set_address(2, 13, old=3)
        moved = f"{lan.addr(13)}:{PORT}"
        n2 = start(lan, 2, 13, tmp_path, [])
        nodes[2] = n2
        n2.wait_ready()
        assert n2.listen == moved
        eventually(lambda: holds(n2, "while-away", b"W"), timeout=30)
        everyone["n2"] = (moved, "alive")
        eventually(lambda: all(members(p) == everyone for p in nodes), timeout=30)
        n2.client.put("from-new-address", b"N")
        n1.client.put("to-new-address", b"T")
        eventually(lambda: holds(n0, "from-new-address", b"N") and holds(n1, "from-new-address", b"N"), 30)
        eventually(lambda: holds(n2, "to-new-address", b"T"), timeout=30)
    finally:
        for p in nodes:
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL)
