"""TLS between nodes (mutual, against a cluster CA) and for the HTTP API, with a throwaway PKI made here.

Nodes run in one process over real loopback TCP (as in test_runtime.py); the HTTP API is served by aiohttp
with the node's `http_server` context and used through `dsm.client`.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dsm import ConfigError, EpidemicStorage, StorageConfig, StorageFactory
from dsm.api.http import create_app
from dsm.client import AsyncClient, Client, TLSError, UnreachableError
from dsm.core.messages import Ping
from dsm.core.peer import PeerSettings
from dsm.core.ring import State
from dsm.net import security
from dsm.net.certs import ClusterCA
from dsm.net.runtime import Runtime
from dsm.net.security import Keyring
from dsm.net.tls import TlsContexts, certificate_node_ids, contexts
from dsm.net.transport import PeerLimits, Transport, split_addr
from dsm.storage.sqlite import SQLiteStore

FAST = PeerSettings(
    probe_interval_ms=200, probe_timeout_ms=100, membership_sync_interval_ms=1000, gossip_interval_ms=500
)
SECRET = "tls-test-cluster-secret-01"


# ---------------------------------------------------------------------------------------------- the PKI


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    ca: str  #: the cluster CA's certificate
    n0: Issued
    n1: Issued
    rogue_ca: str  #: another CA, not the cluster's
    rogue: Issued  #: a node certificate signed by the rogue CA
    anonymous: Issued  #: a certificate of the cluster CA that names no node id


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


class _Authority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, directory: Path, name: str, node_id: bool = True) -> Issued:
        """A node certificate: usable as server and client, naming node `name` (dsm:node:<name>, unless not
        `node_id`), localhost and 127.0.0.1 (for HTTPS clients; peers check only the node id)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if node_id:
            sans.append(x509.UniformResourceIdentifier(f"dsm:node:{name}"))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(_write_cert(directory / f"{name}.crt", cert), _write_key(directory / f"{name}.key", key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    cluster, rogue = _Authority("dsm test cluster CA"), _Authority("someone else's CA")
    return Pki(
        ca=_write_cert(directory / "ca.crt", cluster.cert),
        n0=cluster.issue(directory, "n0"),
        n1=cluster.issue(directory, "n1"),
        rogue_ca=_write_cert(directory / "rogue-ca.crt", rogue.cert),
        rogue=rogue.issue(directory, "rogue"),
        anonymous=cluster.issue(directory, "anonymous", node_id=False),
    )


def tls_config(node_id: str, issued: Issued, ca: str, **more: str) -> StorageConfig:
    """A node's config with TLS (listen_addr empty: the tests drive the Runtime themselves)."""
    return StorageConfig(
        listen_addr="", node_id=node_id, tls_cert_file=issued.cert, tls_key_file=issued.key, tls_ca_file=ca, **more
    )


# ---------------------------------------------------------------------------------------------- nodes


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    """Waits until `check()` is true (the timeout only guards against a hang; it is not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Nodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: dict[str, tuple[Runtime, EpidemicStorage]] = {}

    async def start(
        self, config: StorageConfig, host: str, bootstrap: list[str], keyring: Keyring | None = None
    ) -> Runtime:
        tls = contexts(config)
        assert tls.peer_server is not None and tls.peer_client is not None
        storage = await StorageFactory(config).create_epidemic_storage(
            backing_storage=SQLiteStore(self.tmp / f"{config.node_id}.db")
        )
        runtime = Runtime(
            storage.commits,
            FAST,
            f"{host}:0",
            keyring=keyring,
            server_ssl=tls.peer_server,
            client_ssl=tls.peer_client,
            seed=len(self.nodes),
        )
        self.nodes[config.node_id] = (runtime, storage)
        await runtime.start(bootstrap)
        return runtime

    async def close(self) -> None:
        for runtime, storage in self.nodes.values():
            await runtime.close()
            await storage.close()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    n = Nodes(tmp_path)
    yield n
    await n.close()


@pytest.mark.usefixtures("loopback_hosts")
async def test_two_nodes_replicate_a_write_over_mutual_tls_with_the_secret_too(nodes: Nodes, pki: Pki) -> None:
    seed = await nodes.start(tls_config("n0", pki.n0, pki.ca), "127.0.0.1", [], Keyring(SECRET))
    other = await nodes.start(tls_config("n1", pki.n1, pki.ca), "127.0.0.2", [seed.addr], Keyring(SECRET))

    def joined() -> bool:
        return all(
            r.peer is not None and r.peer.member_state(i) == State.ALIVE for r in (seed, other) for i in ("n0", "n1")
        )

    await eventually(joined)
    await nodes.nodes["n1"][1].put("k", b"over tls")

    async def replicated() -> bool:
        got = await nodes.nodes["n0"][1].get("k")
        return got is not None and got.value == b"over tls"

    await eventually(replicated)
    assert seed.transport.stats.frames_in and other.transport.stats.frames_in
    assert not seed.transport.stats.rejected and not other.transport.stats.rejected


@pytest.mark.usefixtures("loopback_hosts")
async def test_a_node_whose_certificate_the_cluster_ca_did_not_sign_cannot_connect(nodes: Nodes, pki: Pki) -> None:
    seed = await nodes.start(tls_config("n0", pki.n0, pki.ca), "127.0.0.1", [])
    # The rogue trusts the cluster CA (it can verify the seed) but holds a certificate from another CA.
    rogue = await nodes.start(tls_config("rogue", pki.rogue, pki.ca), "127.0.0.9", [seed.addr])
    await eventually(lambda: rogue.transport.stats.connect_failures >= 2)
    assert seed.peer is not None and seed.peer.member_state("rogue") == State.UNKNOWN
    assert sum(seed.transport.stats.frames_in.values()) == 0  # not one of its messages arrived

    def refused() -> bool:  # the listening side counts the failed handshakes too
        gc.collect()
        return seed.transport.stats.rejected["tls_handshake"] >= 1

    await eventually(refused)
    assert rogue.peer is not None and rogue.peer.live_count() <= 1


@pytest.mark.usefixtures("loopback_hosts")
async def test_a_node_that_does_not_trust_the_cluster_ca_does_not_send_to_it(nodes: Nodes, pki: Pki) -> None:
    seed = await nodes.start(tls_config("n0", pki.n0, pki.ca), "127.0.0.1", [])
    # A node with a valid cluster certificate but another CA: it refuses the seed's certificate itself.
    wary = await nodes.start(tls_config("n1", pki.n1, pki.rogue_ca), "127.0.0.2", [seed.addr])
    await eventually(lambda: wary.transport.stats.connect_failures >= 2)
    assert sum(seed.transport.stats.frames_in.values()) == 0
    assert seed.peer is not None and seed.peer.member_state("n1") == State.UNKNOWN


async def test_a_plain_tcp_connection_to_a_tls_listener_is_closed(nodes: Nodes, pki: Pki) -> None:
    seed = await nodes.start(tls_config("n0", pki.n0, pki.ca), "127.0.0.1", [])
    host, port = split_addr(seed.addr)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(security.Initiator(Keyring(), "plain", "").first_frame())
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 10)  # up to the end of the stream
        except ConnectionResetError:
            answer = b""
    finally:
        writer.close()
    # Closed (read() returned at the end of the stream) with at most a TLS alert record (content type 21),
    # never a DSM frame.
    assert answer == b"" or answer[0] == 21, answer[:16]
    assert seed.peer is not None and seed.peer.member_state("plain") == State.UNKNOWN
    assert sum(seed.transport.stats.frames_in.values()) == 0

    def counted() -> bool:
        gc.collect()
        return seed.transport.stats.rejected["tls_handshake"] == 1

    await eventually(counted)


# ---------------------------------------------------------------------------------------------- node ids


class Endpoint:
    """A bare transport with a node's TLS contexts and what it received and failed."""

    def __init__(self, node_id: str, issued: Issued, ca: str, host: str, **limits: bool) -> None:
        tls = contexts(tls_config(node_id, issued, ca))
        self.got: list[tuple[str, object]] = []
        self.failures: list[str] = []
        self.transport = Transport(
            node_id,
            f"{host}:0",
            lambda peer, message: self.got.append((peer, message)),
            Keyring(SECRET),
            server_ssl=tls.peer_server,
            client_ssl=tls.peer_client,
            max_failures=1,
            limits=PeerLimits(**limits),
            on_connect_failure=lambda addr, node_id, reason: self.failures.append(reason),
        )

    async def __aenter__(self) -> Endpoint:
        await self.transport.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()


async def _sent(sender: Endpoint, receiver: Endpoint, dialled: str) -> None:
    """`sender` sends one Ping to `receiver`'s address, meant for `dialled`; waits until it arrived or failed."""
    got, failed = len(receiver.got), len(sender.failures)
    sender.transport.send(dialled, receiver.transport.addr, Ping(1, sender.transport.node_id, dialled, ()))
    await eventually(lambda: len(receiver.got) > got or len(sender.failures) > failed, 10)


@pytest.mark.usefixtures("loopback_hosts")
async def test_a_certificate_must_name_the_member_dialled_and_the_one_claimed(pki: Pki) -> None:
    async with Endpoint("n0", pki.n0, pki.ca, "127.0.0.1") as n0, Endpoint("n1", pki.n1, pki.ca, "127.0.0.2") as n1:
        await _sent(n1, n0, "n0")
        assert n0.got == [("n1", Ping(1, "n1", "n0", ()))] and not n1.failures
        # A node holding n0's certificate (and the secret) at n0's address is not the n2 we dialled.
        async with Endpoint("n2", pki.n1, pki.ca, "127.0.0.9") as n2:
            await _sent(n2, n0, "n3")
            assert n2.failures == ["wrong_node"]
    # A node whose certificate names n0 claims to be n1: the listener refuses it.
    async with Endpoint("n0", pki.n0, pki.ca, "127.0.0.1") as n0, Endpoint("n1", pki.n0, pki.ca, "127.0.0.2") as fake:
        await _sent(fake, n0, "n0")
        assert n0.got == [] and fake.failures == ["wrong_node"]
        assert n0.transport.stats.rejected["wrong_node"] == 1


@pytest.mark.usefixtures("loopback_hosts")
async def test_a_certificate_without_a_node_id_is_refused_unless_the_setting_allows_it(pki: Pki) -> None:
    # As the connecting side: the listener's certificate names no node.
    async with Endpoint("anonymous", pki.anonymous, pki.ca, "127.0.0.1") as anonymous:
        async with Endpoint("n1", pki.n1, pki.ca, "127.0.0.2") as n1:
            await _sent(n1, anonymous, "anonymous")
            assert anonymous.got == [] and n1.failures == ["tls"]
        # As the listening side: the connecting node's certificate names no node.
        async with Endpoint("n0", pki.n0, pki.ca, "127.0.0.9") as n0:
            await _sent(anonymous, n0, "n0")
            assert n0.got == [] and anonymous.failures == ["tls"]
            assert n0.transport.stats.rejected["tls_node_id"] == 1
    relaxed = {"tls_require_node_id": False}
    async with (
        Endpoint("anonymous", pki.anonymous, pki.ca, "127.0.0.1", **relaxed) as anonymous,
        Endpoint("n1", pki.n1, pki.ca, "127.0.0.2", **relaxed) as n1,
    ):
        await _sent(n1, anonymous, "anonymous")
        assert anonymous.got == [("n1", Ping(1, "n1", "anonymous", ()))]
        # A certificate that names another node is refused all the same.
        async with Endpoint("n2", pki.n1, pki.ca, "127.0.0.9", **relaxed) as n2:
            await _sent(n2, anonymous, "anonymous")
            assert n2.failures == ["wrong_node"] and len(anonymous.got) == 1


def test_cluster_certificates_name_their_node(tmp_path: Path) -> None:
    files = ClusterCA(tmp_path).node("n7", "127.0.0.1")
    names = x509.load_pem_x509_certificate(Path(files.cert).read_bytes()).extensions
    uris = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["dsm:node:n7"]
    # An older certificate without the name (kept in a cluster directory) is issued again.
    Path(files.cert).write_bytes(Path(ClusterCA(tmp_path / "other").node("x", "127.0.0.1").cert).read_bytes())
    again = ClusterCA(tmp_path).node("n7", "127.0.0.1")
    names = x509.load_pem_x509_certificate(Path(again.cert).read_bytes()).extensions
    assert names.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["dsm:node:n7"]
    assert certificate_node_ids({"subjectAltName": (("DNS", "x"), ("URI", "dsm:node:a"), ("URI", "https://b"))}) == (
        "a",
    )


# ---------------------------------------------------------------------------------------------- HTTP API


async def _serve_https(
    config: StorageConfig, db: Path, ready: threading.Event, stop: asyncio.Event, box: dict[str, object]
) -> None:
    tls = contexts(config)
    assert tls.http_server is not None
    storage = await StorageFactory(config).create_epidemic_storage(backing_storage=SQLiteStore(db))
    runner = web.AppRunner(create_app(storage, token="tok-tls"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.http_server).start()
    box["port"] = runner.addresses[0][1]
    ready.set()
    await stop.wait()
    await runner.cleanup()
    await storage.close()


@pytest.fixture
def https_port(tmp_path: Path, pki: Pki) -> Iterator[int]:
    """A node serving HTTPS with its certificate, on its own event loop in a thread (for the blocking client)."""
    config = tls_config("h1", pki.n0, pki.ca)
    loop = asyncio.new_event_loop()
    ready, stop, box = threading.Event(), asyncio.Event(), {}
    thread = threading.Thread(
        target=loop.run_until_complete, args=(_serve_https(config, tmp_path / "h1.db", ready, stop, box),)
    )
    thread.start()
    assert ready.wait(20)
    port = box["port"]
    assert isinstance(port, int)
    yield port
    loop.call_soon_threadsafe(stop.set)
    thread.join(20)
    loop.close()


def test_the_http_api_over_tls_answers_a_client_that_trusts_the_ca(https_port: int, pki: Pki) -> None:
    with Client(f"https://127.0.0.1:{https_port}", token="tok-tls", ca_file=pki.ca) as c:
        c.put("k", b"v")
        got = c.get("k")
        assert got is not None and got.value == b"v"
    with Client(f"https://localhost:{https_port}", token="tok-tls", ca_file=pki.ca) as by_name:
        assert by_name.health()["status"] == "ok"


def test_a_client_without_the_ca_fails_with_a_typed_tls_error(https_port: int, pki: Pki) -> None:
    with Client(f"https://127.0.0.1:{https_port}", token="tok-tls") as c, pytest.raises(TLSError) as caught:
        c.get("k")  # the system's CAs do not know the cluster CA
    assert isinstance(caught.value, UnreachableError) and "certificate" in str(caught.value)
    with Client(f"https://127.0.0.1:{https_port}", ca_file=pki.rogue_ca) as c, pytest.raises(TLSError):
        c.get("k")
    with Client(f"http://127.0.0.1:{https_port}") as plain, pytest.raises(UnreachableError):
        plain.get("k")  # plain HTTP to the TLS port


def test_the_async_client_over_tls(https_port: int, pki: Pki) -> None:
    async def run() -> None:
        async with AsyncClient(f"https://127.0.0.1:{https_port}", token="tok-tls", ca_file=pki.ca) as c:
            await c.put("a", b"1")
            got = await c.get("a")
            assert got is not None and got.value == b"1"
        async with AsyncClient(f"https://127.0.0.1:{https_port}", token="tok-tls") as untrusting:
            with pytest.raises(TLSError):
                await untrusting.get("a")

    asyncio.run(run())


def test_the_command_line_client_with_ca_file(https_port: int, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"DSM_HTTP_TOKEN": "tok-tls"}
    node = f"127.0.0.1:{https_port}"  # host:port with a CA file: https
    put = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "put", "cli", "hello", "--node", node, "--ca-file", pki.ca],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert put.returncode == 0, put.stderr
    got = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "get", "cli", "--node", node],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"DSM_CA_FILE": pki.ca},
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "hello"
    untrusted = subprocess.run(
        [sys.executable, "-m", "dsm.cli", "get", "cli", "--node", f"https://{node}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert untrusted.returncode != 0 and "TLS" in untrusted.stderr and "Traceback" not in untrusted.stderr


# ---------------------------------------------------------------------------------------------- settings


def test_contexts_follow_the_settings(pki: Pki) -> None:
    assert contexts(StorageConfig()) == TlsContexts()
    mutual = contexts(tls_config("n0", pki.n0, pki.ca))
    assert mutual.peer_server is not None and mutual.peer_client is not None and mutual.http_server is not None
    assert mutual.peer_server.verify_mode.name == "CERT_REQUIRED" and not mutual.peer_client.check_hostname
    assert mutual.peer_server.minimum_version.name == "TLSv1_2"
    one_way = contexts(tls_config("n0", pki.n0, "", http_tls="off"))
    assert one_way.peer_server is not None and one_way.peer_server.verify_mode.name == "CERT_NONE"
    assert one_way.peer_client is not None and one_way.peer_client.check_hostname  # system CAs, names checked
    assert one_way.http_server is None


def test_tls_settings_from_the_environment(pki: Pki) -> None:
    env = {"DSM_TLS_CERT_FILE": pki.n0.cert, "DSM_TLS_KEY_FILE": pki.n0.key, "DSM_TLS_CA_FILE": pki.ca}
    config = StorageConfig.load(env=env | {"DSM_HTTP_TLS": "off"})
    assert (config.tls_cert_file, config.tls_ca_file, config.http_tls) == (pki.n0.cert, pki.ca, "off")
    assert config.peer_tls and not config.http_uses_tls


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"tls_cert_file": "CERT"}, "tls_key_file"),  # a certificate without its key
        ({"tls_key_file": "KEY"}, "tls_cert_file"),  # a key without its certificate
        ({"tls_ca_file": "CA"}, "tls_cert_file"),  # mutual TLS needs our own certificate
        ({"tls_cert_file": "MISSING", "tls_key_file": "KEY"}, "tls_cert_file"),
        ({"tls_cert_file": "CERT", "tls_key_file": "KEY", "tls_ca_file": "MISSING"}, "tls_ca_file"),
        ({"http_tls": "yes"}, "http_tls"),
        ({"http_tls": "on"}, "http_tls"),  # HTTPS without a certificate
    ],
)
def test_invalid_tls_settings_name_the_field(pki: Pki, tmp_path: Path, given: dict[str, str], field: str) -> None:
    paths = {"CERT": pki.n0.cert, "KEY": pki.n0.key, "CA": pki.ca, "MISSING": str(tmp_path / "missing.pem")}
    values = {name: paths.get(value, value) for name, value in given.items()}
    with pytest.raises(ConfigError) as caught:
        StorageConfig(**values)  # type: ignore[arg-type]
    assert caught.value.field == field and field in str(caught.value)


def test_files_that_do_not_load_fail_at_start_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        contexts(tls_config("n0", Issued(str(junk), pki.n0.key), pki.ca))
    assert caught.value.field == "tls_cert_file"
    with pytest.raises(ConfigError) as caught:
        contexts(tls_config("n0", Issued(pki.n0.cert, pki.n1.key), pki.ca))  # n1's key: not n0's
    assert caught.value.field == "tls_key_file"
    with pytest.raises(ConfigError) as caught:
        contexts(tls_config("n0", pki.n0, str(junk)))
    assert caught.value.field == "tls_ca_file"
    key = serialization.load_pem_private_key(Path(pki.n0.key).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    with pytest.raises(ConfigError) as caught:  # refused, never a password prompt
        contexts(tls_config("n0", Issued(pki.n0.cert, str(encrypted)), pki.ca))
    assert caught.value.field == "tls_key_file"


def test_node_run_refuses_a_certificate_without_its_key(pki: Pki, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    args = ["node", "run", "--node-id", "n1", "--data-dir", str(tmp_path / "d"), "--tls-cert", pki.n0.cert]
    result = subprocess.run(
        [sys.executable, "-m", "dsm.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode != 0 and "tls_key_file" in result.stderr and "Traceback" not in result.stderr
