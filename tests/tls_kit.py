"""Certificates made at test time (the ``cryptography`` library): a CA, a server
certificate it signs for 127.0.0.1 / localhost, and the broker's PKCS12 keystore.

:func:`make_pki` writes, into a directory: ``ca.pem`` (the CA certificate),
``server.p12`` (the server key and certificate chain, for Kafka's
``ssl.keystore.location``, type PKCS12), ``client.pem`` / ``client.key`` (a client
certificate signed by the same CA; the key encrypted with ``key_password`` when given),
and ``other-ca.pem``, a second CA that signed nothing here (an untrusted CA).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    keystore: Path  # PKCS12: server key + certificate + CA
    keystore_password: str
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, sans: list | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, keystore_password: str = "keystore-pass", key_password: str | None = None) -> Pki:
    """Write a CA, a server keystore for 127.0.0.1/localhost, a client certificate and
    an unrelated CA into ``directory`` (created); EC P-256 keys, valid for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("docket test CA", ca_key, "docket test CA", ca_key, ca=True)
    other = _cert("some other CA", other_key, "some other CA", other_key, ca=True)
    server = _cert("127.0.0.1", server_key, "docket test CA", ca_key, ca=False,
                   sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _cert("docket-client", client_key, "docket test CA", ca_key, ca=False)
    (directory / "ca.pem").write_bytes(_pem(ca))
    (directory / "other-ca.pem").write_bytes(_pem(other))
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(50000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
                  .build(keystore_password.encode()))
    (directory / "server.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(b"broker", server_key, server, [ca], encryption))
    (directory / "client.pem").write_bytes(_pem(client))
    key_encryption = (serialization.BestAvailableEncryption(key_password.encode()) if key_password
                      else serialization.NoEncryption())
    (directory / "client.key").write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, key_encryption))
    return Pki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.p12", keystore_password,
               directory / "client.pem", directory / "client.key")
