"""Three `dsm node run` processes as three hosts on one LAN, the way a cluster of machines runs: each node in
its own network namespace with its own address on its own interface (`eth0`, 10.251.N.x/24) and a default
route, the interfaces joined by veth pairs on a bridge that lives in a fourth namespace (the switch), and
names in each host's /etc/hosts (`ip netns exec` mounts /etc/netns/<ns>/hosts). The test itself is a client
on the same LAN (a veth from its namespace to the bridge, .254), so it talks to the nodes through the public
client over the LAN; nothing goes over loopback. Every node starts with the same bootstrap list, all at
once, as in deploy/.

- join, replicate, partition with nftables (each host's own firewall drops the other side's addresses, both
  ways) and heal: writes on both sides are on every node afterwards;
- a node moved to a new address (after a network blip it refuted): stopped, its host renumbered, restarted
  with the same data directory and id and no bootstrap (it rejoins through the members it saved): the
  others learn the new address (they list it, and read from it at consistency `all`, which needs their own
  connections to it) and it catches up, also when its restart's incarnation equals the one the cluster knew
  (found by this test: it now refutes the old address);
- a node rescheduled under its name (deploy/kubernetes' pattern: advertised and bootstrap addresses are
  host names): its machine fails, it comes back on another IP under the same name (found by this test: the
  others' connections to the vanished host swallowed every frame until the transport set TCP_USER_TIMEOUT).

Needs root and the `ip` and `nft` commands (`apt-get install iproute2 nftables`); skipped without them, a
failure under DSM_TEST_STRICT=1. Every namespace, link and /etc/netns entry the fixture made is removed, even
on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dsm.errors import DSMError
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
    #: Host i's current last octet (its address is `subnet`.octet).
    octets: list[int] = field(default_factory=list)

    def addr(self, octet: int) -> str:
        return f"{self.subnet}.{octet}"

    def set_address(self, host: int, octet: int) -> None:
        """Gives host `host`'s eth0 the address .`octet` (instead of its old one), brings it up with its default
        route, and points its name (`name(host)`) there in every host's /etc/hosts."""
        ns = self.hosts[host]
        if host < len(self.octets):
            run("ip", "-n", ns, "addr", "del", f"{self.addr(self.octets[host])}/24", "dev", "eth0")
            self.octets[host] = octet
        else:
            self.octets.append(octet)
        run("ip", "-n", ns, "addr", "add", f"{self.addr(octet)}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")  # (a test may have pulled the cable)
        run("ip", "-n", ns, "route", "replace", "default", "via", self.addr(254), "dev", "eth0")
        lines = ["127.0.0.1 localhost", *(f"{self.addr(o)} {self.name(i)}" for i, o in enumerate(self.octets))]
        for each in self.hosts:
            # `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts; rewritten in place (same inode),
            # running processes see the change at their next lookup, as after a DNS update.
            with open(Path("/etc/netns") / each / "hosts", "w") as hosts:
                hosts.write("\n".join(lines) + "\n")

    @staticmethod
    def name(host: int) -> str:
        return f"h{host}.lan"


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
            (Path("/etc/netns") / ns).mkdir(parents=True, exist_ok=True)
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
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only if empty (nothing else uses it)


def start(lan: Lan, i: int, data: Path, bootstrap: list[str], advertise: str | None = None) -> Proc:
    """Node `n<i>` on host `i`, listening (peers and HTTP) on the host's LAN address, advertising `advertise`
    if given; returns once it printed its first line (`waiting` while it reaches no member, or `ready`)."""
    wrapper = ["ip", "netns", "exec", lan.hosts[i]]
    extra = ["--advertise", advertise] if advertise else []
    host = lan.addr(lan.octets[i])
    return Proc(f"n{i}", host, data, bootstrap, port=PORT, wrapper=wrapper, until="any", extra=extra)


def members(p: Proc) -> dict[str, tuple[str, str]]:
    """Node id -> (address, state), as `p` sees its members."""
    return {m["id"]: (m["addr"], m["state"]) for m in p.client.members()}


def read_all(p: Proc, key: str, value: bytes) -> bool:
    """Whether `p` reads `value` at consistency `all`: every member answered `p`'s request, which `p` sent on
    its own connection to each (connections carry frames one way), dialled at the address it knows."""
    try:
        got = p.client.get(key, consistency="all")
    except DSMError:
        return False
    return got is not None and got.value == value


def partition(lan: Lan, left: list[int], right: list[int]) -> None:
    """Each host's own firewall drops every packet to and from the other side's hosts (the client stays)."""
    for side, other in ((left, right), (right, left)):
        addrs = ", ".join(lan.addr(lan.octets[i]) for i in other)
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


def join(lan: Lan, tmp_path: Path, nodes: list[Proc], by_name: bool = False) -> dict[str, tuple[str, str]]:
    """Starts the three nodes with one bootstrap list (their LAN addresses, or their names), each before any
    is ready, as a cluster of machines starts; returns the member view every node reaches (id -> (address,
    state))."""
    addrs = [f"{lan.name(i) if by_name else lan.addr(lan.octets[i])}:{PORT}" for i in range(NODES)]
    for i in range(NODES):
        nodes.append(start(lan, i, tmp_path, addrs, advertise=addrs[i] if by_name else None))
    for i, p in enumerate(nodes):
        p.wait_ready()
        assert p.listen == addrs[i] and p.http.startswith(lan.addr(lan.octets[i]) + ":")
    everyone = {f"n{i}": (addrs[i], "alive") for i in range(NODES)}
    eventually(lambda: all(members(p) == everyone for p in nodes), timeout=20)
    nodes[0].client.put("first", b"1")
    eventually(lambda: all(holds(p, "first", b"1") for p in nodes), timeout=20)
    return everyone


def caught_up(nodes: list[Proc], p: Proc, key: str, value: bytes, timeout: float) -> None:
    """Waits until `p` holds `key` = `value`; on a timeout the failure shows each node's members and log."""
    try:
        eventually(lambda: holds(p, key, value), timeout=timeout)
    except AssertionError:
        seen = "\n".join(f"{q.node_id}: {members(q)}\n{q.log()[-3000:]}" for q in nodes)
        raise AssertionError(f"{p.node_id} lacks {key!r} after {timeout} s; members and logs:\n{seen}") from None


def incarnation(seen_by: Proc, node_id: str) -> int:
    return int(next(m["incarnation"] for m in seen_by.client.members() if m["id"] == node_id))


@pytest.fixture
def nodes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.mark.slow
def test_join_replicate_partition_heal(lan: Lan, tmp_path: Path, nodes: list[Proc]) -> None:
    everyone = join(lan, tmp_path, nodes)
    n0, n1, n2 = nodes
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


@pytest.mark.slow
def test_a_node_moved_to_a_new_address(lan: Lan, tmp_path: Path, nodes: list[Proc]) -> None:
    everyone = join(lan, tmp_path, nodes)
    n0, n1, n2 = nodes
    # A life with a network blip: cut off, n2 is declared not alive and refutes it after the heal (a higher
    # incarnation, in memory only).
    partition(lan, [0, 1], [2])
    try:
        eventually(lambda: members(n0)["n2"][1] != "alive", timeout=30)
    finally:
        heal(lan, [0, 1, 2])
    eventually(lambda: all(members(p) == everyone for p in nodes), timeout=30)
    # Stop n2, renumber its host, restart it with its data and id and no bootstrap (its saved members).
    assert n2.stop(signal.SIGTERM) == 0
    n0.client.put("while-away", b"W")
    lan.set_address(2, 13)
    moved = f"{lan.addr(13)}:{PORT}"
    n2 = start(lan, 2, tmp_path, [])
    nodes[2] = n2
    n2.wait_ready()
    assert n2.listen == moved
    everyone["n2"] = (moved, "alive")
    # Its restart incarnation may equal the one the cluster knew (refutations of its previous life are not
    # saved): it still refutes the old address (Membership._about_me; this test found that, 2 of 5 runs).
    # The others' connections to the old address die by TCP_USER_TIMEOUT (10 s) before they dial the name
    # again; under a loaded CI machine that, and the anti-entropy round after it, took over 20 s once.
    caught_up(nodes, n2, "while-away", b"W", timeout=45)
    eventually(lambda: all(members(p) == everyone for p in nodes), timeout=20)
    # The others dial it at its new address: a read at `all` needs each one's own connection to it.
    n2.client.put("from-new-address", b"N")
    n1.client.put("to-new-address", b"T")
    eventually(lambda: read_all(n0, "from-new-address", b"N") and read_all(n1, "from-new-address", b"N"), 30)
    eventually(lambda: holds(n2, "to-new-address", b"T"), timeout=30)


@pytest.mark.slow
def test_a_node_rescheduled_under_its_name(lan: Lan, tmp_path: Path, nodes: list[Proc]) -> None:
    """deploy/kubernetes' pattern: each node advertises a stable host name (h<i>.lan, in every host's
    /etc/hosts, as a headless Service's pod names are in DNS) and bootstraps from the list of names. n2's
    machine fails (cable pulled, process killed) and n2 comes back with its data on another IP under the same
    name, as a rescheduled pod does."""
    everyone = join(lan, tmp_path, nodes, by_name=True)
    n0, n1, n2 = nodes
    run("ip", "-n", lan.hosts[2], "link", "set", "eth0", "down")
    n2.stop(signal.SIGKILL)
    n0.client.put("while-away", b"W")
    lan.set_address(2, 23)  # the cable back in; the name h2.lan now points at .23, and .3 is nowhere
    # Restarted as the StatefulSet restarts a pod: the same bootstrap names (the members it saved may predate
    # its join when it was killed a moment after it: it then rejoins through the names).
    names = [everyone[f"n{i}"][0] for i in range(NODES)]
    n2 = start(lan, 2, tmp_path, names, advertise=everyone["n2"][0])
    nodes[2] = n2
    # Its join's answers come on the others' connections to it: dialled again when n2 dials them, as below.
    n2.wait_ready(timeout=45)
    assert n2.http.startswith(lan.addr(23) + ":")
    # The others' connections to the old address swallow frames; n2 dialling them over their silent connections
    # from it makes them dial its name again (`transport.SUPERSEDED_AFTER_S`), else TCP_USER_TIMEOUT (10 s)
    # ends them. 45 s: a loaded CI machine.
    caught_up(nodes, n2, "while-away", b"W", timeout=45)
    eventually(lambda: all(members(p) == everyone for p in nodes), timeout=20)
    n2.client.put("from-rescheduled", b"F")
    eventually(lambda: read_all(n0, "from-rescheduled", b"F") and read_all(n1, "from-rescheduled", b"F"), 20)
