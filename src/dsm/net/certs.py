"""A cluster certificate authority for local clusters (`dsm cluster up --tls`): one CA per cluster directory
and one certificate per node, from the `cryptography` package.

The CA signs only this cluster's node certificates, which is the identity model of `tls.py` (mutual TLS
against the cluster CA, no host name check between nodes). Node certificates are usable as server and
client (each node dials and is dialled), name the node's id as the URI subject alternative name
`dsm:node:<node id>` (checked by the peers, `dsm.net.tls.check_certificate`), and name the node's host
address and `localhost`, so HTTPS clients (`dsm --ca-file CA ...`) can check the host too. A certificate
issued before node ids were named (or naming another id) is issued again. Keys are ECDSA P-256, written
readable by their owner only; certificates are valid for `VALID_DAYS`.

For production, issue node certificates from your own PKI; this is for clusters on one machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dsm.net.tls import node_id_uri

#: Validity of the CA and of node certificates, days.
VALID_DAYS = 365

__all__ = ["ClusterCA", "NodeFiles"]


@dataclass(frozen=True)
class NodeFiles:
    """A node's certificate and key, and the CA to trust (paths)."""

    cert: str
    key: str
    ca: str


def _subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _save_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


class ClusterCA:
    """The CA of one cluster directory: created on first use in `directory`, loaded afterwards."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.cert_path = self.directory / "ca.pem"
        self.key_path = self.directory / "ca-key.pem"
        if self.cert_path.exists() and self.key_path.exists():
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.key_path} is not an EC private key")
            self.key = key
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _subject(f"DSM cluster CA ({self.directory.resolve().parent.name})")
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # key_cert_sign and crl_sign only
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        _save_key(self.key_path, self.key)
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def node(self, node_id: str, host: str) -> NodeFiles:
        """The certificate of `node_id` at `host` (issued once; reused while it exists)."""
        cert_path = self.directory / f"{node_id}.pem"
        key_path = self.directory / f"{node_id}-key.pem"
        if not (cert_path.exists() and key_path.exists() and _names_node(cert_path, node_id)):
            key = ec.generate_private_key(ec.SECP256R1())
            names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_id_uri(node_id))]
            names.append(x509.DNSName("localhost"))
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(_subject(node_id))
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False,
                )
                .sign(self.key, hashes.SHA256())
            )
            _save_key(key_path, key)
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return NodeFiles(str(cert_path), str(key_path), str(self.cert_path))


def _names_node(cert_path: Path, node_id: str) -> bool:
    """Whether the certificate at `cert_path` names `node_id` (URI subject alternative name)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return node_id_uri(node_id) in names.get_values_for_type(x509.UniformResourceIdentifier)
