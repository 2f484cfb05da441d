"""HTTPS for the production profile: a self-signed certificate made on first start, or the operator's files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()

GENERATED_CERT = "tls/wcsgw-cert.pem"
GENERATED_KEY = "tls/wcsgw-key.pem"


def generate_self_signed(cert_path: Path, key_path: Path, *, hostname: str | None = None, days: int = 3650) -> None:
    """Write a self-signed RSA-2048 certificate for ``hostname``, localhost and 127.0.0.1 (key mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    hostname = hostname or socket.gethostname() or "localhost"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wcsgw self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed certificate for {hostname} in {path}", hostname=hostname, path=cert_path)


def certificate_paths(state_dir: Path, cert_file: str, key_file: str) -> tuple[Path, Path]:
    """The configured files, or the generated pair in the state directory (made now when missing)."""
    if cert_file:
        return Path(cert_file), Path(key_file)
    cert_path, key_path = state_dir / GENERATED_CERT, state_dir / GENERATED_KEY
    if not (cert_path.exists() and key_path.exists()):
        generate_self_signed(cert_path, key_path)
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """Twisted TLS server options for a PEM certificate and key; ``ValueError`` naming the file on failure."""
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS certificate or key: {exc}") from None
    try:
        certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as exc:
        raise ValueError(f"bad TLS certificate {cert_path} or key {key_path}: {exc}") from None
    return certificate.options()
