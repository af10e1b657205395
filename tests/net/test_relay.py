"""An on-path attacker without the secret between three real `dsm node run` processes (issue 17, finding 2).

Every connection between the nodes passes through a TCP relay (tests/relay.py) that holds neither the
cluster secret nor a certificate. It redirects a connection meant for one member into another, replays
recorded connections, splices two live connections and reorders frames; the nodes must accept no frame
from any of it and a `quorum` write must report the true count. The decisive attack is the redirect: on
commit 3923955 a node accepted a connection that another member had opened towards a third one, and counted
the acknowledgement carried on it for its own pending request (request numbers started at 1 everywhere), so
a `quorum` write was acknowledged while only its coordinator held it. Run once with the secret alone and
once with mutual TLS (certificates from `dsm.net.certs`) and the secret.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.client import ConsistencyUnmetError
from dsm.net.certs import ClusterCA
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)
from relay import Relay

pytestmark = pytest.mark.usefixtures("loopback_hosts")

HOSTS = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
REJECTED = re.compile(r'^dsm_connections_rejected_total\{reason="([^"]+)"\} (\S+)$', re.MULTILINE)
RECEIVED = re.compile(r'^dsm_messages_received_total\{type="([^"]+)"\} (\S+)$', re.MULTILINE)


def _metrics(p: Proc) -> str:
    with urllib.request.urlopen(p.url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def rejected(p: Proc) -> dict[str, float]:
    return {reason: float(value) for reason, value in REJECTED.findall(_metrics(p))}


def received(p: Proc) -> float:
    """Every message the node accepted from its peers so far."""
    return sum(float(value) for _, value in RECEIVED.findall(_metrics(p)))


def alive(p: Proc) -> set[str]:
    return {m["id"] for m in p.client.members() if m["state"] == "alive"}


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay("127.0.0.9")
    yield r
    r.close()


def _cluster(procs: list[Proc], tmp_path: Path, relay: Relay, tls: bool) -> dict[str, Proc]:
    """Three nodes that reach each other only through the relay (each advertises its relay address)."""
    nodes: dict[str, Proc] = {}
    ca = ClusterCA(tmp_path / "tls") if tls else None
    for name, host in HOSTS.items():
        port = _free_port(host)
        relay.routes[name] = f"{host}:{port}"
        env = {"DSM_ADVERTISE_ADDR": relay.listen(name), "DSM_CONSISTENCY_TIMEOUT_MS": "2000"}
        if ca is not None:
            files = ca.node(name, host)
            env |= {
                "DSM_TLS_CERT_FILE": files.cert,
                "DSM_TLS_KEY_FILE": files.key,
                "DSM_TLS_CA_FILE": files.ca,
                "DSM_HTTP_TLS": "off",
            }
        bootstrap = [relay.addrs["a"]] if nodes else []
        nodes[name] = Proc(name, host, tmp_path, bootstrap, port=port, env=env)
        procs.append(nodes[name])
    eventually(lambda: all(alive(p) == set(HOSTS) for p in nodes.values()), 30)
    return nodes


def _attack(procs: list[Proc], tmp_path: Path, relay: Relay, tls: bool) -> None:
    nodes = _cluster(procs, tmp_path, relay, tls)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # Honest traffic first (recorded by the relay), and one level request on each coordinator, so that a and b
    # number their next requests alike (as on 3923955, where every node counted from 1).
    a.client.put("honest", b"0", consistency="quorum")
    b.client.put("honest-b", b"0", consistency="quorum")
    honest = [r for r in relay.recorded if r.source == HOSTS["a"] and r.name == "b" and len(r.data) > 300]
    assert honest, [(r.source, r.name, len(r.data)) for r in relay.recorded]

    # 1. Redirect. Everything a sends is swallowed, so no member can store a's next write; c's connections
    # meant for b are redirected into a. b coordinates a write too: c's acknowledgement of it, sent towards b,
    # lands at a while a waits for acknowledgements of its own write.
    rejected_a = rejected(a)
    relay.drop_from = {HOSTS["a"]}
    relay.redirects[(HOSTS["c"], "b")] = "a"
    relay.cut()
    outcome: dict[str, object] = {}

    def write_on_a() -> None:
        try:
            outcome["ack"] = a.client.put("forged", b"1", consistency="quorum")
        except ConsistencyUnmetError as exc:
            outcome["error"] = exc

    writer = threading.Thread(target=write_on_a)
    writer.start()
    time.sleep(0.3)
    # a's answer is swallowed and c's goes to a: b may miss its level, which is not the point.
    with contextlib.suppress(ConsistencyUnmetError):
        b.client.put("bait", b"2", consistency="quorum")
    writer.join(30)
    assert "ack" not in outcome, "a quorum write was acknowledged while only its coordinator held it"
    error = outcome["error"]
    assert isinstance(error, ConsistencyUnmetError) and error.status == 503
    assert (error.acknowledged, error.required) == (1, 2)  # the true count: a alone
    if not tls:  # with TLS, c itself hangs up: a's certificate does not name b
        assert rejected(a).get("wrong_node", 0) > rejected_a.get("wrong_node", 0)

    if not tls:  # (the relay splices and reorders by frames, which TLS hides from it)
        # 2. Splice: each connection to b completes its own handshake, then carries the other's frames.
        relay.drop_from.clear()
        relay.redirects.clear()
        relay.splice_to = {"b"}
        relay.cut()
        time.sleep(0.3)
        accepted_b, auth_b = received(b), rejected(b).get("auth", 0)
        eventually(lambda: relay.spliced >= 2, 30)
        eventually(lambda: rejected(b).get("auth", 0) >= auth_b + 2)
        assert received(b) == accepted_b, "a spliced frame was accepted"

        # 3. Reorder: frames after the handshake arrive two by two, the later one first.
        relay.splice_to.clear()
        relay.reorder_to = {"b"}
        relay.cut()
        time.sleep(0.3)
        accepted_b, auth_b = received(b), rejected(b).get("auth", 0)
        eventually(lambda: relay.reordered >= 1, 30)
        eventually(lambda: rejected(b).get("auth", 0) > auth_b)
        assert received(b) == accepted_b, "a reordered frame was accepted"

    # 4. Replay. Nothing honest reaches b now; the relay replays whole recorded connections from a (handshake
    # and frames) to b, and into c.
    relay.drop_from.clear()
    relay.redirects.clear()
    relay.splice_to.clear()
    relay.reorder_to.clear()
    relay.drop_to = {"b"}
    relay.cut()
    time.sleep(0.3)
    accepted_b, rejected_b, rejected_c = received(b), sum(rejected(b).values()), sum(rejected(c).values())
    for record in honest[:3]:
        relay.replay(bytes(record.data), relay.routes["b"], timeout=5)
    relay.replay(bytes(honest[0].data), relay.routes["c"], timeout=5)
    assert received(b) == accepted_b, "a replayed frame was accepted"
    eventually(lambda: sum(rejected(b).values()) >= rejected_b + min(3, len(honest)))
    eventually(lambda: sum(rejected(c).values()) > rejected_c)

    # 5. The relay goes back to relaying: the cluster heals and quorum writes succeed again, truly.
    relay.drop_to.clear()
    relay.splice_to.clear()
    relay.reorder_to.clear()
    relay.cut()
    eventually(lambda: all(alive(p) == set(HOSTS) for p in nodes.values()), 30)
    a.client.put("healed", b"3", consistency="quorum")
    got = c.client.get("healed", consistency="quorum")
    assert got is not None and got.value == b"3"


@pytest.mark.slow
def test_an_on_path_relay_without_the_secret_gets_no_frame_and_no_acknowledgement_in(
    procs: list[Proc], tmp_path: Path, relay: Relay
) -> None:
    _attack(procs, tmp_path, relay, tls=False)


@pytest.mark.slow
def test_the_same_attacks_under_mutual_tls(procs: list[Proc], tmp_path: Path, relay: Relay) -> None:
    _attack(procs, tmp_path, relay, tls=True)
