"""A renewed HTTPS certificate is used without a restart (2026-12-01).

The retailer's CA issues short-lived certificates (90 days or less); a renewal job writes the new pair over
``signage.tls_cert``/``tls_key``. The signage room checks the files every ``TLS_CHECK_S`` (30 s) while HTTPS runs:
a changed pair that loads is switched to for new handshakes (connections already open keep theirs); one that does
not (the cert written, not yet its key) keeps the pair in use, sets ``http.tls_error`` and is tried again. Real node,
real TLS connections, certificates made with the ``openssl`` CLI; the served certificate is told by its serial.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import edge.signage.room as room_mod


def _cert(d: Path, cn: str, days: int) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 (subject ``cn``, valid ``days``) and its key, PEM, in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "node.crt", d / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={cn}",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _served(port: int) -> x509.Certificate:
    """The certificate a NEW TLS connection to ``port`` is given (not verified: only which one it is)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _metrics(n: Any) -> dict[str, float]:
    _, _, text = n.get("/metrics")
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
            if ln.startswith("shelfcast_signage_tls_")}


def _http(n: Any) -> dict[str, Any]:
    return n.json("/api/health")["rooms"]["signage"]["http"]  # type: ignore[no-any-return]


def test_a_renewed_pair_is_served_to_new_connections_and_a_half_written_one_is_not(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cert, key = _cert(tmp_path / "live", "shelfcast-node-a", 90)
    a = _pem(cert)
    b_cert, b_key = _cert(tmp_path / "renewed", "shelfcast-node-b-renewed", 30)
    b = _pem(b_cert)
    assert a.serial_number != b.serial_number
    tls_port = free_port()
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=tls_port)
    room = n.node.signage
    assert _served(tls_port).serial_number == a.serial_number
    assert _metrics(n) == {"shelfcast_signage_tls_enabled": 1,
                           "shelfcast_signage_tls_cert_expiry_seconds": int(a.not_valid_after_utc.timestamp()),
                           "shelfcast_signage_tls_reloads_total": 0}
    # a connection opened before the renewal (keep-alive): it keeps its certificate and goes on working
    ctx = ssl.create_default_context(cafile=str(cert))
    old = http.client.HTTPSConnection("127.0.0.1", tls_port, context=ctx, timeout=10)
    old.request("GET", "/api/screens")
    assert old.getresponse().read() and old.sock is not None
    old_sock = old.sock
    assert n.sync(room.check_tls_files) is False  # nothing changed: nothing done
    status = n.json("/api/health")["rooms"]["signage"]["status"]

    # the renewal job has written the new certificate but not yet its key: the pair does not match
    caplog.set_level(logging.INFO, logger="shelfcast.signage")
    cert.write_bytes(b_cert.read_bytes())
    assert n.sync(room.check_tls_files) is False
    assert n.sync(room.check_tls_files) is False  # tried again at the next check: still the half-written pair
    h = _http(n)
    assert h["tls"] is True and h["tls_error"] is not None, h
    assert "signage.tls_key" in h["tls_error"] and "is not the certificate's" in h["tls_error"], h["tls_error"]
    assert n.json("/api/health")["rooms"]["signage"]["status"] == status  # HTTPS still works: not degraded by it
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "shelfcast.signage"]
    assert len(warnings) == 1 and "is not the certificate's" in warnings[0].getMessage(), warnings
    assert _served(tls_port).serial_number == a.serial_number  # the old pair is still served
    assert _metrics(n)["shelfcast_signage_tls_reloads_total"] == 0

    # ... and now the key: the new pair is used for new connections, the error is gone
    key.write_bytes(b_key.read_bytes())
    assert n.sync(room.check_tls_files) is True
    assert _served(tls_port).serial_number == b.serial_number
    assert _http(n)["tls_error"] is None
    assert _metrics(n) == {"shelfcast_signage_tls_enabled": 1,
                           "shelfcast_signage_tls_cert_expiry_seconds": int(b.not_valid_after_utc.timestamp()),
                           "shelfcast_signage_tls_reloads_total": 1}
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "renewed" in r.getMessage()]
    assert len(infos) == 1 and b.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC") in infos[0], infos
    old.request("GET", "/api/screens")  # the connection opened before: same socket, its certificate, still served
    assert old.getresponse().status == 200 and old.sock is old_sock
    assert x509.load_der_x509_certificate(old_sock.getpeercert(binary_form=True)).serial_number == a.serial_number
    old.close()


def test_the_room_checks_the_files_by_itself(make_node: Callable[..., Any], free_port: Callable[[], int],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No one calls the check: the room's own task (every TLS_CHECK_S, made short here) picks up the renewal."""
    monkeypatch.setattr(room_mod, "TLS_CHECK_S", 0.1)
    cert, key = _cert(tmp_path / "live", "shelfcast-node-a", 90)
    b_cert, b_key = _cert(tmp_path / "renewed", "shelfcast-node-b-renewed", 30)
    tls_port = free_port()
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=tls_port)
    assert _served(tls_port).serial_number == _pem(cert).serial_number
    key.write_bytes(b_key.read_bytes())
    cert.write_bytes(b_cert.read_bytes())
    want = _pem(b_cert).serial_number
    deadline = time.monotonic() + 20
    while _served(tls_port).serial_number != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _served(tls_port).serial_number == want, "the renewed certificate was not picked up"
    assert _metrics(n)["shelfcast_signage_tls_reloads_total"] == 1


def test_without_tls_the_gauges_say_off(make_node: Callable[..., Any]) -> None:
    n = make_node()
    assert _metrics(n) == {"shelfcast_signage_tls_enabled": 0, "shelfcast_signage_tls_reloads_total": 0}


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole at once (as ``install`` does): the node never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_https_starts_without_a_restart_once_its_files_are_there(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A node that booted before the certificate's key was copied (a real install order): HTTPS is tried again
    every TLS_CHECK_S (made short here) and starts once the pair loads; before, only a port in use was retried
    and the node stayed HTTP-only until a restart."""
    monkeypatch.setattr(room_mod, "TLS_CHECK_S", 0.1)
    caplog.set_level(logging.INFO, logger="shelfcast.signage")
    good_cert, good_key = _cert(tmp_path / "issued", "shelfcast-node-a", 90)
    _, other_key = _cert(tmp_path / "other", "shelfcast-node-other", 90)
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "node.crt", live / "node.key"
    _replace(cert, good_cert.read_bytes())  # the certificate is there, its key not yet
    tls_port = free_port()
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=tls_port)
    h = n.json("/api/health")["rooms"]["signage"]
    assert h["status"] == "degraded" and h["http"]["tls"] is False, h
    assert "signage.tls_key" in h["http"]["tls_error"] and "does not exist" in h["http"]["tls_error"], h["http"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", tls_port), timeout=2).close()

    # a key that is not the certificate's: still off, the new problem is one WARNING (not one per try)
    _replace(key, other_key.read_bytes())
    deadline = time.monotonic() + 20
    while "is not the certificate's" not in (_http(n)["tls_error"] or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "is not the certificate's" in (_http(n)["tls_error"] or ""), _http(n)
    time.sleep(0.5)  # several more tries with the same problem
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "shelfcast.signage"]
    assert len(warnings) == 1 and "is not the certificate's" in warnings[0], warnings

    # the right key: HTTPS starts, no restart; health back to ok, the error cleared, one INFO line
    _replace(key, good_key.read_bytes())
    deadline = time.monotonic() + 20
    while not _http(n)["tls"] and time.monotonic() < deadline:
        time.sleep(0.05)
    h = n.json("/api/health")["rooms"]["signage"]
    assert h["http"]["tls"] is True and h["http"]["tls_port"] == tls_port and h["http"]["tls_error"] is None, h
    assert h["status"] == "ok", h
    assert _served(tls_port).serial_number == _pem(good_cert).serial_number
    ctx = ssl.create_default_context(cafile=str(good_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_port, context=ctx, timeout=10)
    conn.request("GET", "/api/screens")
    assert conn.getresponse().status == 200
    conn.close()
    started = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "https://" in r.getMessage()]
    assert len(started) == 1 and "no restart needed" in started[0], started
    # and from now on the renewal watch runs for it as for a site that started at boot
    b_cert, b_key = _cert(tmp_path / "renewed", "shelfcast-node-b-renewed", 30)
    _replace(key, b_key.read_bytes())
    _replace(cert, b_cert.read_bytes())
    want = _pem(b_cert).serial_number
    deadline = time.monotonic() + 20
    while _served(tls_port).serial_number != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _served(tls_port).serial_number == want


def test_health_shows_the_certificates_expiry(make_node: Callable[..., Any], free_port: Callable[[], int],
                                              tmp_path: Path) -> None:
    """``http.tls_cert_not_after`` (ISO-8601 UTC) and ``http.tls_cert_expires_in_days`` of the certificate served
    now (a renewal changes them); null with TLS off. Every key health had stays."""
    cert, key = _cert(tmp_path / "live", "shelfcast-node-a", 90)
    b_cert, b_key = _cert(tmp_path / "renewed", "shelfcast-node-b-renewed", 30)
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=free_port())
    h = _http(n)
    old_keys = {"listening", "host", "port", "error", "tls", "tls_port", "tls_error", "admin_tls_only"}
    assert old_keys <= set(h), h
    a_end = _pem(cert).not_valid_after_utc
    assert h["tls_cert_not_after"] == a_end.strftime("%Y-%m-%dT%H:%M:%SZ"), h
    assert datetime.fromisoformat(h["tls_cert_not_after"]) == a_end.replace(microsecond=0)  # ISO-8601, UTC
    assert 89.9 <= h["tls_cert_expires_in_days"] <= 90.0, h
    # a renewal: health follows the certificate in use
    _replace(key, b_key.read_bytes())
    _replace(cert, b_cert.read_bytes())
    assert n.sync(n.node.signage.check_tls_files) is True
    h = _http(n)
    assert h["tls_cert_not_after"] == _pem(b_cert).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), h
    assert 29.9 <= h["tls_cert_expires_in_days"] <= 30.0, h

    off = _http(make_node())
    assert old_keys <= set(off) and off["tls"] is False, off
    assert off["tls_cert_not_after"] is None and off["tls_cert_expires_in_days"] is None, off
