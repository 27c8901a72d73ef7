"""Certificates made in the test (a CA, and broker certificates it signs) and a private
mosquitto with a TLS listener that presents one of them.

Made with the `cryptography` package, the agent's own dependency: EC P-256 keys, a CA
certificate with the CA basic constraint, broker certificates naming their hosts in the
subject alternative name, valid from five minutes ago for a day unless a test says
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import MosquittoBroker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip


@dataclass
class Authority:
    """A certificate authority: its certificate in `cert` (PEM), what a client pins."""

    name: str
    cert: Path
    _key: ec.EllipticCurvePrivateKey
    _certificate: x509.Certificate

    @classmethod
    def create(cls, folder: Path, name: str = "Loa test CA") -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        cert = folder / f"{name.lower().replace(' ', '-')}.pem"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(name, cert, key, certificate)

    def issue(
        self,
        folder: Path,
        hosts: tuple[str, ...] = ("localhost",),
        *,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> tuple[Path, Path]:
        """A broker certificate for hosts, signed by this CA: (certificate, key) files."""
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(_name(hosts[0]))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid_from or now - timedelta(minutes=5))
            .not_valid_after(valid_until or now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )  # fmt: skip
        cert, key_file = folder / "broker.crt", folder / "broker.key"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return cert, key_file


def tls_mosquitto(workdir: Path, cert: Path, key: Path) -> MosquittoBroker:
    """A private mosquitto (not started) whose one listener speaks TLS with cert and key
    (readable: the fixture's config runs the broker as the user running the tests)."""
    broker = MosquittoBroker(workdir)
    broker.conf.write_text(broker.conf.read_text() + f"certfile {cert}\nkeyfile {key}\n")
    return broker
