"""Opt-in HTTPS on the screens server (``signage.tls_cert``/``tls_key``/``tls_port``/``admin_tls_only``, 2026-12-01).

A check-in device on the store network sent the loyalty id and ``Authorization: Bearer <admin token>`` in clear
(docs/privacy.md). With a certificate the node also listens for HTTPS on ``tls_port`` (same app, routes, gate and
caps); with ``admin_tls_only`` an admin request on the plain port from another device is a 403 naming the HTTPS
address, before the token is looked at. Loopback (the node itself) stays allowed on plain HTTP. The SSE fan-out's
raw socket send (plain TCP only) must never write into a TLS stream. Real TLS connections, a self-signed cert made
with the ``openssl`` CLI.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.config import SignageSection
from edge.events import ShopperEvent

TOKEN = "https-test-token-000042"
CHECKIN = {"customer": "loyalty-7", "screen": "dairy-screen"}




def _client_ctx(cert: Path) -> ssl.SSLContext:
    """A client that trusts only the node's certificate (as a check-in device provisioned with it)."""
    return ssl.create_default_context(cafile=str(cert))


def _post(url: str, *, ctx: ssl.SSLContext | None = None, source: str | None = None,
          token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    """POST the check-in to ``url`` (a new connection), from ``source`` when given; (status, JSON answer)."""
    req = urllib.request.Request(url, data=json.dumps(CHECKIN).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    handlers: list[Any] = []
    if source is not None:
        class Bound(urllib.request.HTTPHandler):
            def http_open(self, r: Any) -> Any:
                import http.client

                return self.do_open(lambda host, **kw: http.client.HTTPConnection(
                    host, source_address=(source, 0), **kw), r)
        handlers.append(Bound())
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _visit(n: Any, session: str) -> None:
    """A shopper picks something at the dairy screen: the check-in has a visit to attach to."""
    n.publish(ShopperEvent(session=session, sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))


def _customer(n: Any, session: str) -> Any:
    return n.sync(lambda: getattr(n.node.recommender.visits.get(session), "customer", None))


def test_a_check_in_over_https_works_and_is_stored(make_node: Callable[..., Any], free_port: Callable[[], int],
                                                  tmp_path: Path, stored_checkins: Callable[[Any], Any],
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    cert, key = node_cert(tmp_path)
    tls_port = free_port()
    n = make_node(admin_token=TOKEN, tls_cert=str(cert), tls_key=str(key), tls_port=tls_port)
    http = n.json("/api/health")["rooms"]["signage"]["http"]
    assert http["tls"] is True and http["tls_port"] == tls_port and http["tls_error"] is None, http
    _visit(n, "tls-1")
    status, out = _post(f"https://127.0.0.1:{tls_port}/api/checkin", ctx=_client_ctx(cert))
    assert status == 200, out
    assert out["session"] == "tls-1" and _customer(n, "tls-1") == out["customer"]
    deadline = time.monotonic() + 10
    while not stored_checkins(n.config) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_checkins(n.config) == [("tls-1", out["customer"])]
    # the read-only pages answer on HTTPS too (same app), and a client that does not trust the cert is refused
    with urllib.request.urlopen(f"https://127.0.0.1:{tls_port}/api/screens", context=_client_ctx(cert),
                                timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://127.0.0.1:{tls_port}/api/screens", timeout=10)


def test_admin_tls_only_refuses_plain_admin_requests_from_other_devices(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path, lan: str,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    cert, key = node_cert(tmp_path, lan)
    tls_port = free_port()
    n = make_node(host="0.0.0.0", admin_token=TOKEN, tls_cert=str(cert), tls_key=str(key), tls_port=tls_port,
                  admin_tls_only=True)
    _visit(n, "lan-1")
    # a device on the store network, plain HTTP, the right token: refused before the token is looked at
    status, out = _post(f"http://{lan}:{n.port}/api/checkin", source=lan)
    assert status == 403, out
    assert f"https://{lan}:{tls_port}/api/checkin" in out["error"] and "signage.admin_tls_only" in out["error"]
    assert _customer(n, "lan-1") is None  # nothing stored
    status, wrong = _post(f"http://{lan}:{n.port}/api/checkin", source=lan, token="not-the-token-at-all-0000")
    assert status == 403 and wrong == out  # the same answer: the token in clear is never checked
    # its read-only pages stay on plain HTTP
    with urllib.request.urlopen(f"http://{lan}:{n.port}/api/screens", timeout=10) as r:
        assert r.status == 200
    # the same device over HTTPS: accepted
    status, ok = _post(f"https://{lan}:{tls_port}/api/checkin", ctx=_client_ctx(cert), source=None)
    assert status == 200, ok
    assert ok["session"] == "lan-1" and _customer(n, "lan-1") == ok["customer"]
    # the node itself (loopback) may still use plain HTTP
    status, local = _post(f"http://127.0.0.1:{n.port}/api/checkin")
    assert status == 200 and local["ok"] and _customer(n, local["session"]) == local["customer"], local


def test_the_sse_stream_over_https_gets_correct_frames_after_a_push(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    """The hub's raw socket send is for plain TCP only: had it written a frame into the TLS stream, the client
    would see a bad record (an SSL error) instead of the pushed frame."""
    cert, key = node_cert(tmp_path)
    tls_port = free_port()
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=tls_port)
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
    s = _client_ctx(cert).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        s.sendall(b"GET /api/screens/dairy-screen/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        buf = b""

        def read_until(needle: bytes, start: int) -> None:
            nonlocal buf
            deadline = time.monotonic() + 10
            while needle not in buf[start:]:
                left = deadline - time.monotonic()
                assert left > 0, f"no {needle!r} within 10 s: {buf[-300:]!r}"
                s.settimeout(left)
                try:
                    chunk = s.recv(65536)  # an ssl.SSLError here is the raw send's plaintext in the TLS stream
                except TimeoutError:
                    continue
                assert chunk, f"closed before {needle!r}: {buf[-300:]!r}"
                buf += chunk

        read_until(b"event: recommendations", 0)
        assert buf.startswith(b"HTTP/1.1 200") and b"text/event-stream" in buf.split(b"\r\n\r\n")[0]
        for k in range(3):  # several pushes, each written by the hub while the stream is idle (its fast path)
            mark = len(buf)
            _visit(n, f"tls-sse-{k}")
            read_until(f'"session":"tls-sse-{k}"'.encode(), mark)
        assert n.sync(lambda: n.node.signage.hub.stats["direct"]) >= 3  # offered at once, not via the mailbox
        frames = [line for line in buf.split(b"\n") if line.startswith(b"data: {")]
        assert {json.loads(f[6:])["session"] for f in frames} >= {"tls-sse-0", "tls-sse-1", "tls-sse-2"}
    finally:
        s.close()


@pytest.mark.parametrize(("keys", "named"), [
    ({"tls_cert": "/etc/shelfcast/node.crt"}, ("signage.tls_cert", "signage.tls_key")),
    ({"tls_key": "/etc/shelfcast/node.key"}, ("signage.tls_key", "signage.tls_cert")),
    ({"admin_tls_only": True}, ("signage.admin_tls_only", "signage.tls_cert", "signage.tls_key")),
    ({"tls_cert": "/c", "tls_key": "/k", "port": 8443}, ("signage.tls_port", "signage.port")),
    ({"tls_cert": "/c", "tls_key": "/k", "tls_port": 0}, ("tls_port",)),
])
def test_config_mistakes_are_refused_naming_the_keys(keys: dict[str, Any], named: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        SignageSection(**keys)
    for key in named:
        assert key in str(exc.value), (key, str(exc.value))
    SignageSection(port=8443)  # no certificate: tls_port is not in use, nothing a store has today is refused


def test_bad_pem_files_are_a_clear_error_and_the_screens_keep_plain_http(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    cert, key = node_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = node_cert(tmp_path / "other")  # a valid key, but not this certificate's
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    cases = [(cert, junk, ["signage.tls_key", "not a private key in PEM form"]),
             (key, key, ["signage.tls_cert", "not a certificate in PEM form"]),
             (cert, tmp_path / "missing.key", ["signage.tls_key", "does not exist"]),
             (cert, other_key, ["signage.tls_key", "is not the certificate's"])]
    for i, (c, k, needles) in enumerate(cases):
        tls_port = free_port()
        n = make_node(tls_cert=str(c), tls_key=str(k), tls_port=tls_port)
        h = n.json("/api/health")["rooms"]["signage"]
        assert h["status"] == "degraded" and h["http"]["tls"] is False and h["http"]["listening"] is True, (i, h)
        for needle in needles:
            assert needle in h["http"]["tls_error"], (i, h["http"]["tls_error"])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", tls_port), timeout=2).close()


def test_a_connection_that_never_says_hello_is_closed_after_the_request_timeout(
        make_node: Callable[..., Any], free_port: Callable[[], int], tmp_path: Path,
        node_cert: Callable[..., tuple[Path, Path]]) -> None:
    """The gate counts a TLS connection once its handshake is done; one that never starts it is closed after
    ``signage.request_timeout_s`` (asyncio's own default would hold it 60 s), as a silent plain one is."""
    cert, key = node_cert(tmp_path)
    tls_port = free_port()
    n = make_node(tls_cert=str(cert), tls_key=str(key), tls_port=tls_port, request_timeout_s=1)
    s = socket.create_connection(("127.0.0.1", tls_port), timeout=20)
    try:
        try:
            got = s.recv(1024)
        except ConnectionResetError:
            got = b""
        assert got == b""  # closed by the node (a recv timeout here: still held)
    finally:
        s.close()
    assert n.json("/api/health")["rooms"]["signage"]["http"]["tls"] is True  # the site itself goes on
