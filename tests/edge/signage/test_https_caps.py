"""The connection caps hold on the HTTPS port from TCP accept on, not from the end of the TLS handshake (2026-12-01).

The gate counted a TLS connection only once its handshake was done, so connections that never send a ClientHello
were bounded by the handshake timeout (``signage.request_timeout_s``) and the descriptor limit only: one device
could hold thousands of them on ``tls_port`` (each with a 256 KiB read buffer asyncio allocates at once). Now every
TCP connection to the HTTPS port counts against ``signage.max_connections_per_ip`` and ``signage.max_connections``
at accept, as on the plain port; past a cap it is closed at once (no TLS yet to carry a 503), the refusal counted
and logged once a minute. Loopback and ``signage.trusted_clients`` are treated as on the plain port. Real node,
real sockets from a LAN address, real TLS (a certificate made with the ``openssl`` CLI).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HANDSHAKE_S = 60  # signage.request_timeout_s here: the node would hold a silent connection this long




def _silent(host: str, port: int, source: str) -> socket.socket:
    """A TCP connection from ``source`` that never sends a byte (no ClientHello)."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect((host, port))
    return s


def _closed_by_node(socks: list[socket.socket], within: float, enough: int | None = None) -> list[int]:
    """Which of ``socks`` the node closed (EOF or reset) within ``within`` seconds, far below HANDSHAKE_S (or
    until ``enough`` are); the others it still holds."""
    closed: set[int] = set()
    deadline = time.monotonic() + within
    enough = len(socks) if enough is None else enough
    while len(closed) < enough and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], left)
        for s in ready:
            try:
                got = s.recv(1024)
            except ConnectionResetError:
                got = b""
            assert got == b"", got  # the node sends nothing to a connection that has not said hello
            closed.add(socks.index(s))
    return sorted(closed)


def _https_get(host: str, port: int, cert: Path, source: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET /api/health over HTTPS (a new connection, from ``source`` when given), trusting only ``cert``."""
    raw = socket.create_connection((host, port), timeout=10, source_address=(source, 0) if source else None)
    with ssl.create_default_context(cafile=str(cert)).wrap_socket(raw, server_hostname=host) as s:
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _wait(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def test_silent_connections_past_a_devices_cap_are_closed_at_once_and_others_still_get_https(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path, lan: str,
        caplog: pytest.LogCaptureFixture,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    cert, key = node_cert(tmp_path, lan)
    tls_port, cap, extra = free_port(), 4, 6
    n = make_node(host="0.0.0.0", tls_cert=str(cert), tls_key=str(key), tls_port=tls_port,
                  request_timeout_s=HANDSHAKE_S, max_streams=4, max_streams_per_ip=2, max_connections=20,
                  max_connections_per_ip=cap)
    hub = n.node.signage.hub
    caplog.set_level(logging.WARNING, logger="shelfcast.signage")
    flood = [_silent(lan, tls_port, lan) for _ in range(cap + extra)]
    try:
        # the extra ones are closed by the node at once (before: held until the 60 s handshake timeout)
        closed = _closed_by_node(flood, within=10, enough=extra)
        assert len(closed) == extra, f"{len(closed)} of {cap + extra} silent sockets closed by the node: {closed}"
        held = [s for i, s in enumerate(flood) if i not in closed]
        assert _closed_by_node(held, within=0.3) == []  # the ones under the cap are held (their handshake awaited)
        assert n.sync(lambda: hub.conn_per_peer.get(lan)) == cap  # counted from accept, not from the handshake
        stats = n.sync(lambda: dict(hub.stats))
        assert stats["refused_max_connections_per_ip"] == extra and stats["refused_max_connections"] == 0, stats
        logged = [r.getMessage() for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
        assert len(logged) == 1 and f"HTTPS connection from {lan}" in logged[0], logged  # once a minute
        assert f"{lan} already has {cap} open connections" in logged[0], logged

        # another client (the node itself) gets HTTPS while the device is at its cap
        status, health = _https_get("127.0.0.1", tls_port, cert)
        assert status == 200 and health["rooms"]["signage"]["http"]["tls"] is True
        # the device at its cap is refused on HTTPS too; once its silent sockets are closed it gets HTTPS again
        over = _silent(lan, tls_port, lan)
        assert _closed_by_node([over], within=10) == [0]
        over.close()
    finally:
        for s in flood:
            s.close()
    assert _wait(lambda: n.sync(lambda: hub.conn_per_peer.get(lan)) is None)  # a handshake never done: given back
    status, _ = _https_get(lan, tls_port, cert, source=lan)
    assert status == 200
    # a connection whose handshake was done is counted once and given back once
    assert _wait(lambda: n.sync(lambda: (hub.stats["connections"], dict(hub.conn_per_peer))) == (0, {}))


def test_a_trusted_device_is_held_by_the_total_on_https_and_loopback_never_is(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path, lan: str,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    """``signage.trusted_clients`` leaves a device out of the per-device cap, not out of ``max_connections``: past
    the total its silent connections are closed at once, and the node's own clients still get HTTPS."""
    cert, key = node_cert(tmp_path, lan)
    tls_port, total, extra = free_port(), 20, 5
    n = make_node(host="0.0.0.0", tls_cert=str(cert), tls_key=str(key), tls_port=tls_port,
                  request_timeout_s=HANDSHAKE_S, max_streams=4, max_streams_per_ip=2, max_connections=total,
                  max_connections_per_ip=4, trusted_clients=[lan])
    hub = n.node.signage.hub
    assert _wait(lambda: n.sync(lambda: hub.stats["connections"]) == 0)
    flood = [_silent(lan, tls_port, lan) for _ in range(total + extra)]
    try:
        closed = _closed_by_node(flood, within=10, enough=extra)
        assert len(closed) == extra, f"{len(closed)} of {total + extra} silent sockets closed by the node"
        assert _closed_by_node([s for i, s in enumerate(flood) if i not in closed], within=0.3) == []
        assert n.sync(lambda: hub.conn_per_peer.get(lan)) == total  # past its per-device cap of 4: trusted
        stats = n.sync(lambda: dict(hub.stats))
        assert stats["refused_max_connections"] == extra and stats["refused_max_connections_per_ip"] == 0, stats
        # the node's own clients are let in past the total, over HTTPS and plain HTTP
        status, _ = _https_get("127.0.0.1", tls_port, cert)
        assert status == 200
        with urllib.request.urlopen(f"{n.base}/api/health", timeout=10) as r:
            assert r.status == 200
    finally:
        for s in flood:
            s.close()
    assert _wait(lambda: n.sync(lambda: (hub.stats["connections"], dict(hub.conn_per_peer))) == (0, {}))
