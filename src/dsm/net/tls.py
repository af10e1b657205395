"""TLS (stdlib `ssl`, TLS 1.2 and later) for node-to-node connections and the HTTP API, from the config.

`contexts(config)` builds the three contexts a node needs; each is None when TLS is off for that side:
- `peer_server`: the node's listener for other nodes. It presents `tls_cert_file`; with `tls_ca_file` it
  requires a client certificate signed by that CA (mutual TLS), otherwise it asks for none.
- `peer_client`: the node's connections to other nodes. It presents `tls_cert_file` as its client
  certificate. With `tls_ca_file` the peer's certificate must be signed by that CA and its host name is
  not checked; without it the peer's certificate is checked against the system's CAs and the host of
  the address we connect to, as a browser would.
- `http_server`: the HTTP API (`http_tls`), presenting `tls_cert_file`; clients are not asked for
  certificates (they authenticate with the bearer token, `http_token`).

Why no host name check with a cluster CA: nodes reach each other at the host:port they advertise (often
an IP address, sometimes one that changes with the machine), and a certificate need not name it. The
cluster CA is the identity: it signs only this cluster's node certificates, so "signed by our CA" means
"one of our nodes", in both directions. That is the model of etcd's peer TLS (`--peer-client-cert-auth`
with `--peer-trusted-ca-file`) and of Consul's `verify_incoming`/`verify_outgoing` without
`verify_server_hostname`. The consequence to know: any holder of a certificate from that CA can act as
any node (as any holder of the cluster secret can), so give the cluster its own CA, never a CA shared
with other services. A certificate with an extended key usage must allow both serverAuth and clientAuth,
since each node uses it both ways.

Node ids in certificates: a node certificate names its node id as a URI subject alternative name,
`dsm:node:<node id>` (`NODE_ID_URI_PREFIX`; `dsm.net.certs` issues them so). After the TLS handshake the
connecting side checks that the certificate names the member it dialled (or, dialling a bootstrap address,
the node that answered the node handshake), and under mutual TLS the accepting side checks that the client
certificate names the node id the initiator claims (`check_certificate`): a certificate of one node cannot
be used to pose as another, even by a holder of the cluster CA's other certificates. A certificate that
names no node id is refused (`CertificateNodeError`, a failure of reason "tls") unless
`tls_require_node_id` is off (for certificates from a PKI that cannot add the name; then the cluster CA
model above holds: any certificate of the CA passes). Without `tls_ca_file`, connecting nodes present no
certificate and only the connecting side checks.

TLS and the cluster secret (`dsm.net.security`) are independent and may be combined: TLS outside, the
node handshake and its sealed frames within it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dsm.config import StorageConfig
from dsm.errors import ConfigError
from dsm.net.security import CertificateNodeError, WrongNodeError

__all__ = ["NODE_ID_URI_PREFIX", "TlsContexts", "certificate_node_ids", "check_certificate", "contexts"]

#: A node certificate names its node id as the URI subject alternative name NODE_ID_URI_PREFIX + node id.
NODE_ID_URI_PREFIX = "dsm:node:"


@dataclass(frozen=True)
class TlsContexts:
    """The TLS contexts of one node; None where TLS is off (pass them to `Runtime` and `web.TCPSite`)."""

    peer_server: ssl.SSLContext | None = None
    peer_client: ssl.SSLContext | None = None
    http_server: ssl.SSLContext | None = None


def contexts(config: StorageConfig) -> TlsContexts:
    """The node's TLS contexts as `config` describes them (see the module docstring).

    Raises:
        ConfigError: a certificate, key or CA file that cannot be read or loaded (not PEM, an encrypted
            key, a key that does not match the certificate), naming the setting.
    """
    if not config.tls_cert_file:
        return TlsContexts()
    peer_server = _context(config, server=True)
    peer_client = _context(config, server=False)
    if config.tls_ca_file:
        for context in (peer_server, peer_client):
            _load_ca(context, config.tls_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        peer_client.check_hostname = False  # the cluster CA model (module docstring)
    else:
        peer_client.load_default_certs(ssl.Purpose.SERVER_AUTH)  # keeps check_hostname and CERT_REQUIRED
    http_server = _context(config, server=True) if config.http_uses_tls else None
    return TlsContexts(peer_server, peer_client, http_server)


def _context(config: StorageConfig, *, server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A password callback that gives none: an encrypted key fails here instead of prompting on a tty.
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        try:  # which file is at fault: does the certificate file hold certificates?
            _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), config.tls_cert_file)
        except ConfigError:
            raise ConfigError("tls_cert_file", config.tls_cert_file, f"a PEM certificate chain ({exc})") from exc
        raise ConfigError(
            "tls_key_file",
            config.tls_key_file,
            f"the unencrypted PEM private key of tls_cert_file={config.tls_cert_file!r} ({exc})",
        ) from exc
    return context


def _load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError("tls_ca_file", ca_file, f"a PEM file of CA certificates ({exc})") from exc


def node_id_uri(node_id: str) -> str:
    """The URI subject alternative name that names `node_id` in a node certificate."""
    return NODE_ID_URI_PREFIX + node_id


def certificate_node_ids(certificate: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The node ids a peer certificate names (as `ssl.SSLSocket.getpeercert()` decodes it)."""
    if not certificate:
        return ()
    names = certificate.get("subjectAltName", ())
    return tuple(
        value[len(NODE_ID_URI_PREFIX) :]
        for kind, value in names
        if kind == "URI" and isinstance(value, str) and value.startswith(NODE_ID_URI_PREFIX)
    )


def check_certificate(certificate: Mapping[str, Any] | None, node_id: str, required: bool = True) -> None:
    """Checks that a verified peer certificate names `node_id`. Nothing to check without one (no TLS, or a
    listener that asks connecting nodes for no certificate).

    Raises:
        WrongNodeError: the certificate names other node ids only.
        CertificateNodeError: it names none, and `required` (the setting tls_require_node_id).
    """
    if not certificate:
        return
    named = certificate_node_ids(certificate)
    if not named:
        if required:
            raise CertificateNodeError(
                f"the peer's certificate names no node id ({NODE_ID_URI_PREFIX}<id>; tls_require_node_id)"
            )
        return
    if node_id not in named:
        raise WrongNodeError(f"the peer's certificate names {', '.join(map(repr, named))}, not {node_id!r}")
