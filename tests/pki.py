"""A throwaway PKI for TLS tests, made with the ``openssl`` command: a CA, a server certificate
it signed for 127.0.0.1 and localhost, and another CA that signed nothing. A client trusts the CA
through ``SSL_CERT_FILE``, which ``ssl.create_default_context`` honours."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the sender is told to trust
    other_ca: Path  # a CA that did not sign the server's certificate
    server_cert: Path
    server_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _new_ca(name: str, cwd: Path) -> None:
    _openssl(
        *("req", "-x509", "-new", "-nodes", "-days", "1", "-subj", f"/CN=test CA {name}"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=cwd,
    )


def make_pki(d: Path) -> Pki:
    """A test CA, the server's certificate it signed, and another CA (EC keys: fast), in
    ``d``."""
    _new_ca("ca", d)
    _new_ca("other", d)
    _openssl(
        *("req", "-new", "-nodes", "-subj", "/CN=localhost"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", "server.key", "-out", "server.csr"),
        cwd=d,
    )
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-set_serial", "2", "-days", "1", "-extfile", "server.ext", "-out", "server.pem"),
        cwd=d,
    )
    return Pki(d / "ca.pem", d / "other.pem", d / "server.pem", d / "server.key")


def server_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context
