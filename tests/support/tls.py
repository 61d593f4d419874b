"""A private CA and a loopback server certificate for HTTPS tests, and an HTTPS emulator with a small bucket.

``make_tls(directory)`` writes ``ca.pem`` (the CA certificate: what clients trust), ``server.pem`` and
``server.key`` (the server's certificate and private key, for 127.0.0.1, localhost and ::1, signed by the
CA). Keys are ECDSA P-256 (as Google's front ends mostly use); the CA's key is thrown away. It uses the
``cryptography`` package when importable, else the ``openssl`` command line.

``https_gcs(directory)`` starts fake-gcs-server over HTTPS with such a certificate and fills bucket
``tls-test`` with a few small JPEGs; tests/conftest.py turns it into the session fixtures ``tls_files``,
``https_gcs`` and ``wrong_ca``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hivedata.tools.emulator import Emulator

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
METHODS = ("auto", "cryptography", "openssl")


@dataclass(frozen=True)
class TlsFiles:
    """Where make_tls wrote its PEM files."""

    directory: Path
    ca: Path  # CA certificate: give it to clients (verify=, --cacert, CURL_CA_BUNDLE)
    cert: Path  # server certificate (leaf only)
    key: Path  # server private key (unencrypted PKCS#8)

    def client_context(self) -> ssl.SSLContext:
        """An SSLContext that trusts only this CA (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def cryptography_available() -> bool:
    """True when the `cryptography` package can be imported."""
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def _make_with_cryptography(d: Path, ca_name: str, hosts: Sequence[str], days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])).issuer_name(ca_subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


def _make_with_openssl(d: Path, ca_name: str, hosts: Sequence[str], days: int) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the cryptography package nor the openssl command is available")
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory(prefix="hivedata-ca-") as tmp:
        t = Path(tmp)

        def run(*args: str) -> None:
            r = subprocess.run([openssl, *args], capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()[-2000:]}")

        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(t / "ca.key"))
        run("req", "-x509", "-new", "-key", str(t / "ca.key"), "-sha256", "-days", str(days), "-subj",
            f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash",
            "-out", str(d / "ca.pem"))
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(d / "server.key"))
        run("req", "-new", "-key", str(d / "server.key"), "-subj", f"/CN={hosts[0]}", "-out", str(t / "server.csr"))
        (t / "ext.cnf").write_text(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        run("x509", "-req", "-in", str(t / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(t / "ca.key"),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(days),
            "-sha256", "-extfile", str(t / "ext.cnf"), "-out", str(d / "server.pem"))


def make_tls(directory: str | Path, *, ca_name: str = "hivedata test CA", hosts: Sequence[str] = DEFAULT_HOSTS,
             days: int = 7, method: str = "auto") -> TlsFiles:
    """Writes a fresh private CA (ca.pem) and a server certificate + key for `hosts` signed by it into `directory`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if not hosts:
        raise ValueError("hosts is empty")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if method == "cryptography" or (method == "auto" and cryptography_available()):
        _make_with_cryptography(d, ca_name, hosts, days)
    else:
        _make_with_openssl(d, ca_name, hosts, days)
    (d / "server.key").chmod(0o600)
    return TlsFiles(d, d / "ca.pem", d / "server.pem", d / "server.key")


def small_jpegs(n: int = 4) -> dict[str, bytes]:
    """n small photo-like JPEGs (a few KB each) named like ImageNet train objects."""
    from tests.support.photos import jpeg

    return {f"train/n0000000{i % 2}/img_{i}.JPEG": jpeg(64 + 16 * i, 48 + 8 * i, seed=i) for i in range(n)}


@dataclass
class HttpsGcs:
    """An HTTPS fake-gcs-server with one bucket of small JPEGs, and the CA that verifies it."""

    emulator: Emulator
    tls: TlsFiles
    bucket: str
    objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """https://127.0.0.1:port"""
        return self.emulator.url

    @property
    def ca(self) -> Path:
        """The CA file (ca.pem) that verifies the emulator's certificate."""
        return self.tls.ca


@contextmanager
def https_gcs(directory: str | Path, *, bucket: str = "tls-test", objects: dict[str, bytes] | None = None,
              backend: str = "memory") -> Iterator[HttpsGcs]:
    """An HTTPS emulator (certificate made in `directory`) holding `bucket` with `objects` (small_jpegs())."""
    tls = make_tls(directory)
    objects = small_jpegs() if objects is None else objects
    with Emulator(scheme="https", cert_file=tls.cert, key_file=tls.key, ca=tls.ca, export_env=False,
                  backend=backend) as em:
        em.create_bucket(bucket)
        for name, data in objects.items():
            em.upload(bucket, name, data)
        yield HttpsGcs(em, tls, bucket, dict(objects))
