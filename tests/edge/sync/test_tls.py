"""TLS to a real Mosquitto with certificates made here: it works with CA + client certificate, and
each handshake failure gives its own plain-words error (no secrets in logs)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.sync.link import LinkSettings, MqttLink

NOW = dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    k = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
            .sign(k, hashes.SHA256()))
    return cert, k


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, *, server: bool,
          names: tuple[str, ...] = ("localhost", "127.0.0.1"), expired: bool = False
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    k = _key()
    start, end = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)) if expired else \
        (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30))
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca[0].subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[1].public_key()), critical=False)
         .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return b.sign(ca[1], hashes.SHA256()), k


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca, other = _ca("ShelfCast test CA"), _ca("Some other CA")
    _write(d / "ca", ca[0])
    _write(d / "server", *_leaf(ca, "broker", server=True))
    _write(d / "server-other-ca", *_leaf(other, "broker", server=True))
    _write(d / "server-wrong-host", *_leaf(ca, "broker", server=True, names=("broker.example.com",)))
    _write(d / "server-expired", *_leaf(ca, "broker", server=True, expired=True))
    _write(d / "client", *_leaf(ca, "node-1", server=False))
    _write(d / "client-expired", *_leaf(ca, "node-1", server=False, expired=True))
    _write(d / "client-other-ca", *_leaf(other, "node-1", server=False))
    return d


def start_tls(mosquitto: Any, pki: Path, server: str = "server") -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mosquitto.extra = [f"listener {port} 127.0.0.1", f"cafile {pki / 'ca.pem'}",
                       f"certfile {pki / (server + '.pem')}", f"keyfile {pki / (server + '.key')}",
                       "require_certificate true", "use_identity_as_username true"]
    mosquitto.restart()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return port


def link_error(settings: LinkSettings, timeout: float = 8.0) -> tuple[bool, str | None]:
    link = MqttLink(settings)
    link.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if link.connected.is_set():
                return True, None
            if link.last_error:
                return False, link.last_error
            time.sleep(0.05)
        return link.connected.is_set(), link.last_error
    finally:
        link.stop()


def settings(port: int, pki: Path, host: str = "127.0.0.1", client: str | None = "client", **kw: Any) -> LinkSettings:
    return LinkSettings(url=f"mqtts://{host}:{port}", client_id=f"tls-{time.monotonic_ns()}", ca_file=pki / "ca.pem",
                        cert_file=pki / f"{client}.pem" if client else None,
                        key_file=pki / f"{client}.key" if client else None, connack_timeout_s=2.0, **kw)


def test_tls_with_ca_and_client_certificate_carries_events(mosquitto: Any, pki: Path, node_config: Any,
                                                           start_node: Any) -> None:
    port = start_tls(mosquitto, pki)
    ok, err = link_error(settings(port, pki))
    assert ok, err
    cfg = node_config(f"mqtts://localhost:{port}", ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                      key_file=str(pki / "client.key"))
    node = start_node(cfg)
    from edge.events import ShopperEvent

    for i in range(50):
        node.store.append_event(ShopperEvent(session="s", sku=f"k{i}", action="pick", zone=None),
                                upstream=node.room.topics.events)
    assert node.room.drain(10.0)
    assert node.room.drainer.stats["acked_events"] == 50


@pytest.mark.parametrize(("server", "client", "host", "expect"), [
    ("server-other-ca", "client", "127.0.0.1", "unknown CA"),
    ("server-wrong-host", "client", "127.0.0.1", "hostname mismatch"),
    ("server-expired", "client", "127.0.0.1", "certificate expired"),
    ("server", None, "127.0.0.1", "missing client certificate"),
    ("server", "client-expired", "127.0.0.1", "client certificate as expired"),
    ("server", "client-other-ca", "127.0.0.1", "does not trust the CA"),
])
def test_each_handshake_failure_has_a_clear_error(mosquitto: Any, pki: Path, server: str, client: str | None,
                                                  host: str, expect: str, caplog: pytest.LogCaptureFixture) -> None:
    port = start_tls(mosquitto, pki, server)
    caplog.set_level(logging.DEBUG)
    ok, err = link_error(settings(port, pki, host=host, client=client, username="node-1",
                                  password="s3cret-Passw0rd"))
    assert not ok
    assert err is not None and expect in err, err
    assert f"{host}:{port}" in err
    assert "s3cret-Passw0rd" not in caplog.text and "s3cret-Passw0rd" not in err


def test_plain_port_with_mqtts_and_refused_port_are_explained(mosquitto: Any, pki: Path) -> None:
    ok, err = link_error(LinkSettings(url=f"mqtts://127.0.0.1:{mosquitto.port}", client_id="x",
                                      ca_file=pki / "ca.pem", connack_timeout_s=2.0))
    assert not ok and err is not None and "does not speak TLS" in err, err
    mosquitto.stop()
    ok, err = link_error(LinkSettings(url=mosquitto.url, client_id="x"))
    assert not ok and err is not None and "nothing is listening" in err, err
    ok, err = link_error(LinkSettings(url="mqtts://127.0.0.1:1", client_id="x", ca_file=pki / "missing.pem"))
    assert not ok and err is not None and "does not exist" in err, err
