"""A real OpenLDAP slapd for tests, started by deploy/ldap/start-slapd.sh.

    with SlapdServer() as ldap:
        settings = load_settings(environ={}, **ldap.settings_overrides())

The server listens on a free loopback port, keeps its database in a temporary
directory and holds deploy/ldap/demo.ldif. If it cannot start, SlapdError carries the
script's output: tests that need it fail, they are never skipped.

Also here, for failure tests: SilentServer (an LDAP server that hangs or hangs up),
make_tls_files and TlsProxy (ldaps:// with a certificate of the test's choosing).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.relay import LoopbackRelay

REPO = Path(__file__).resolve().parent.parent
LDAP_DEPLOY = REPO / "deploy" / "ldap"
DEMO_LDIF = LDAP_DEPLOY / "demo.ldif"

BASE_DN = "dc=district,dc=example"
USER_BASE = f"ou=people,{BASE_DN}"
GROUP_BASE = f"ou=groups,{BASE_DN}"
SERVICE_DN = f"cn=broker,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "broker-secret"
DEMO_PASSWORD = "demo2026"


# deploy/ldap/start-slapd.sh's rootdn and its default password (test servers only)
ROOT_DN = "cn=admin,dc=district,dc=example"
ROOT_PASSWORD = "admin-secret"


class SlapdError(RuntimeError):
    """slapd could not be started or stopped; the message holds the script's output."""


def free_loopback_port() -> int:
    """A TCP port nothing listens on right now (someone may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SlapdServer:
    """Starts on construction; stop() (or leaving the `with` block) removes everything."""

    START_ATTEMPTS = 3  # a new port each time: another process may grab a "free" port

    def __init__(self, ldif: Path = DEMO_LDIF, timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s
        self.run_dir = Path(tempfile.mkdtemp(prefix="vdi-slapd-"))
        outputs = []
        for _attempt in range(self.START_ATTEMPTS):
            self.port = free_loopback_port()
            result = self._script("start-slapd.sh", str(self.run_dir), str(self.port), str(ldif))
            if result.returncode == 0:
                return
            outputs.append(f"port {self.port}, exit {result.returncode}:\n{result.stdout}")
            if "Address already in use" not in result.stdout:
                break
        self.stop()
        raise SlapdError("start-slapd.sh failed\n" + "\n".join(outputs))

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def settings_overrides(self, **changes: Any) -> dict[str, Any]:
        """Settings fields for the broker's directory adapter against this server."""
        values: dict[str, Any] = {
            "ldap_url": self.url,
            "ldap_base_dn": BASE_DN,
            "ldap_bind_dn": SERVICE_DN,
            "ldap_bind_password": SERVICE_PASSWORD,
            "ldap_user_base": USER_BASE,
            "ldap_group_base": GROUP_BASE,
            "ldap_user_attr": "uid",
            "ldap_timeout_s": 2.0,
        }
        values.update(changes)
        return values

    def modify(self, ldif: str) -> None:
        """Change the directory as its administrator would (ldapmodify, LDIF change
        records). Raises SlapdError with ldapmodify's output when it refuses."""
        result = subprocess.run(
            ["ldapmodify", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=self._timeout_s, check=False)
        if result.returncode != 0:
            raise SlapdError(f"ldapmodify failed ({result.returncode}): {result.stdout}")

    def stop(self) -> None:
        """Stop slapd and delete its directory. Idempotent."""
        if not self.run_dir.exists():
            return
        result = self._script("stop-slapd.sh", str(self.run_dir))
        if result.returncode != 0:
            raise SlapdError(f"stop-slapd.sh failed ({self.run_dir} kept):\n{result.stdout}")
        shutil.rmtree(self.run_dir)

    def _script(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(LDAP_DEPLOY / name), *args], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=self._timeout_s, check=False,
                env={**os.environ, "SLAPD_ROOT_PASSWORD": ROOT_PASSWORD})
        except subprocess.TimeoutExpired as e:
            raise SlapdError(f"{name} did not finish in {self._timeout_s} s: {e.output}") from e

    def __enter__(self) -> SlapdServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class SilentServer(LoopbackRelay):
    """A loopback TCP server that accepts connections and never answers (or, with
    close_at_once, hangs up immediately): an LDAP server that hangs or drops clients.
    A relay that relays nothing.

    `accepted` counts connections, which lets a test prove no traffic happened.
    """

    scheme = "ldap"

    def __init__(self, close_at_once: bool = False) -> None:
        self._close_at_once = close_at_once
        self._held: list[socket.socket] = []
        self.accepted = 0
        super().__init__(0, name="silent-ldap")

    def admit(self, conn: socket.socket) -> socket.socket | None:
        self.accepted += 1
        if self._close_at_once:
            conn.close()
        else:
            self._held.append(conn)
        return None

    def stop(self) -> None:
        super().stop()
        for conn in self._held:
            conn.close()


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # PEM of the CA that signed `cert`
    cert: Path
    key: Path


def make_tls_files(directory: Path, *, ip: str | None = None, dns: str | None = None) -> TlsFiles:
    """A fresh CA and a server certificate it signs for `ip` and/or `dns`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vdi test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if dns:
        names.append(x509.DNSName(dns))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns or ip or "x")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


class TlsProxy(LoopbackRelay):
    """ldaps:// in front of a plain loopback LDAP server: terminates TLS with `tls`'s
    certificate and relays bytes to 127.0.0.1:`backend_port`. Connections whose TLS
    handshake fails (the client rejected the certificate) are counted and dropped.
    """

    scheme = "ldaps"

    def __init__(self, tls: TlsFiles, backend_port: int) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(tls.cert, tls.key)
        self.failed_handshakes = 0
        super().__init__(backend_port, name="tls-proxy")

    def admit(self, conn: socket.socket) -> socket.socket | None:
        conn.settimeout(5)
        try:
            return self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            conn.close()
            return None
