"""A node whose clock is behind (a Pi before NTP) meets a broker certificate that is "not yet valid": the sync
link and `doctor` say the clock is wrong and how to enable NTP, not a generic TLS or CA error. Real Mosquitto,
real certificates made here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import BrokerSection
from edge.doctor import check_broker


def _future_server(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], start: dt.datetime
                   ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A broker certificate valid only from ``start`` on: what a node whose clock is behind sees."""
    k = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca[0].subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[1].public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca[1], hashes.SHA256()))
    return cert, k


@pytest.fixture(scope="module")
def pki_future(tmp_path_factory: pytest.TempPathFactory, tls: Any) -> Path:
    d = tmp_path_factory.mktemp("pki-future")
    ca = tls._ca("ShelfCast test CA")
    tls._write(d / "ca", ca[0])
    tls._write(d / "server", *_future_server(ca, tls.NOW + dt.timedelta(days=2)))
    tls._write(d / "client", *tls._leaf(ca, "node-1", server=False))
    return d


def test_link_says_the_clock_is_wrong_when_the_broker_certificate_is_not_yet_valid(mosquitto: Any,
                                                                                   pki_future: Path, tls: Any) -> None:
    port = tls.start_tls(mosquitto, pki_future)
    ok, err = tls.link_error(tls.settings(port, pki_future, host="localhost"))
    assert not ok
    assert err is not None and "not yet valid" in err, err
    assert "the clock is wrong (this node says " in err, err
    assert "sudo timedatectl set-ntp true" in err, err
    assert f"localhost:{port}" in err


def test_doctor_says_the_clock_is_wrong_not_the_ca(mosquitto: Any, pki_future: Path, tls: Any) -> None:
    port = tls.start_tls(mosquitto, pki_future)
    b = BrokerSection(url=f"mqtts://localhost:{port}", ca_file=pki_future / "ca.pem",
                      cert_file=pki_future / "client.pem", key_file=pki_future / "client.key")
    c = check_broker("cloud_broker", b, timeout_s=3.0)
    assert c.status == "fail", c
    assert "not yet valid" in c.detail, c
    assert "the clock is wrong" in c.fix and "sudo timedatectl set-ntp true" in c.fix, c
    assert "ca_file" not in c.fix, c  # the CA is right; telling the technician to replace it was the old advice
