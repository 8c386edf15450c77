"""``shelfcast doctor``'s ``signage_tls`` check (HTTPS for check-ins, 2026-12-01): the PEM files of
``signage.tls_cert``/``tls_key`` load and match, the service user can read them, and the certificate is not
expired (FAIL) or within 30 days of it (WARN); each problem names the files and the fix. Real certificates made
here with ``cryptography`` (a dependency), real files and permission bits.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import load_config
from edge.doctor import check_signage_tls


def _pair(d: Path, name: str, *, days_left: float) -> tuple[Path, Path]:
    """A self-signed certificate valid until ``days_left`` days from now (negative: expired) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shelfcast-node")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now + dt.timedelta(days=days_left))
            .sign(key, hashes.SHA256()))
    c, k = d / f"{name}.crt", d / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def _cfg(tmp: Path, demo_yaml: Any, cert: Path | None, key: Path | None, **extra: Any) -> Any:
    tls = {"tls_cert": str(cert), "tls_key": str(key)} if cert is not None else {}
    return load_config(demo_yaml(tmp, signage={"port": 8080, **tls, **extra}))


def test_a_good_pair_passes_and_no_certificate_is_a_skip(tmp_path: Path, demo_yaml: Any) -> None:
    cert, key = _pair(tmp_path, "good", days_left=200)
    c = check_signage_tls(_cfg(tmp_path, demo_yaml, cert, key, admin_tls_only=True))
    assert c.status == "pass" and str(cert) in c.detail and "HTTPS on port 8443" in c.detail, c
    assert check_signage_tls(_cfg(tmp_path, demo_yaml, None, None)).status == "skip"


def test_expiring_soon_is_a_warning_and_expired_a_failure(tmp_path: Path, demo_yaml: Any) -> None:
    cert, key = _pair(tmp_path, "soon", days_left=10)
    c = check_signage_tls(_cfg(tmp_path, demo_yaml, cert, key))
    assert c.status == "warn" and "expires in" in c.detail and str(cert) in c.detail, c
    # the node picks a renewed pair up by itself (renewal watch): the advice must not send anyone to restart it
    assert str(cert) in c.fix and "no restart needed" in c.fix and "systemctl restart" not in c.fix
    cert, key = _pair(tmp_path, "old", days_left=-3)
    c = check_signage_tls(_cfg(tmp_path, demo_yaml, cert, key))
    assert c.status == "fail" and "expired" in c.detail and str(cert) in c.detail and c.fix, c


def test_a_key_that_is_not_the_certificates_fails_naming_both(tmp_path: Path, demo_yaml: Any) -> None:
    cert, _ = _pair(tmp_path, "a", days_left=200)
    _, other_key = _pair(tmp_path, "b", days_left=200)
    c = check_signage_tls(_cfg(tmp_path, demo_yaml, cert, other_key))
    assert c.status == "fail" and "signage.tls_key" in c.detail and "not the certificate's" in c.detail, c
    # a node whose HTTPS failed on its files tries them again every 30 s (c7714b9): no restart in the advice
    assert str(cert) in c.detail and str(other_key) in c.detail and "every 30 s" in c.fix, c
    assert "systemctl restart" not in c.fix


def test_a_key_the_service_user_cannot_read_fails_with_chown_chmod(tmp_path: Path, demo_yaml: Any) -> None:
    cert, key = _pair(tmp_path, "n", days_left=200)
    key.chmod(0o000)  # the bits are what the service user is held to (a root test runner still reads the file)
    me = pwd.getpwuid(os.geteuid()).pw_name
    try:
        c = check_signage_tls(_cfg(tmp_path, demo_yaml, cert, key), service_user=me)
    finally:
        key.chmod(0o600)
    # as root the file loads but the bits refuse the service user; as another user it does not load at all
    assert c.status == "fail" and f"signage.tls_key {key}" in c.detail, c
    assert f"service user {me} cannot read it" in c.detail or f"the node runs as ({me})" in c.detail, c
    assert "chown root:" in c.fix + c.detail and "chmod 640" in c.fix + c.detail, c
