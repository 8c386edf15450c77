"""What the screens port tells a client about itself, over raw sockets against a real node (2026-12-01).

Every answer says ``Server: shelfcast`` and nothing more (aiohttp sent ``Server: Python/3.11 aiohttp/3.14.5``: the
versions tell an attacker which exploits to try), and ``X-Content-Type-Options: nosniff`` (aiohttp's own 400s quote
the bytes that could not be parsed: plain text, never to be sniffed as a page) — pages, JSON, the SSE stream, static
files and their 304s, 404s, the 503s of the stream and connection caps, admin refusals and aiohttp's parse errors.
The rest of the security review is held here too: duplicate or conflicting Content-Length is a 400 (no request hides
in a body), no CORS headers and no successful preflight (a web page elsewhere cannot read the API or send an admin
action with a token), and the error pages quote input only escaped, as text.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

TOKEN = "headers-token-8c1d4e7f2a9b"
SCREEN = "dairy-screen"


def _send(port: int, raw: bytes, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    s = socket.socket()
    if source is not None:
        s.bind((source, 0))
    s.settimeout(5)
    s.connect((host, port))
    if raw:
        s.sendall(raw)
    return s


def _answer(s: socket.socket, whole: bool = True) -> bytes:
    """What the node sent: until it closed (``whole``), or just the head."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
            if not whole and b"\r\n\r\n" in out:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _exchange(port: int, raw: bytes, **kw: Any) -> bytes:
    with _send(port, raw, **kw) as s:
        return _answer(s)


def _head(answer: bytes) -> tuple[int, dict[str, list[str]]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    return int(head[0].split(" ", 2)[1]), fields


def _get(path: str, extra: str = "", close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: node\r\n{extra}" + ("Connection: close\r\n" if close else "")
            + "\r\n").encode()


def _post(path: str, body: bytes, token: str | None = TOKEN, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _wait(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def test_every_answer_says_server_shelfcast_without_versions(make_node: Callable[..., Any], lan: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_HEADERS_TOKEN", TOKEN)
    n = make_node(host="0.0.0.0", admin_token="env:SC_HEADERS_TOKEN", max_streams=1, max_connections=16,
                  max_streams_per_ip=1, max_connections_per_ip=2)
    port = n.port
    seen: dict[str, bytes] = {}
    seen["page"] = _exchange(port, _get("/"))
    seen["screen page"] = _exchange(port, _get(f"/screens/{SCREEN}"))
    seen["json"] = _exchange(port, _get(f"/api/screens/{SCREEN}/recommendations"))
    seen["health HEAD"] = _exchange(port, b"HEAD /api/health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
    seen["metrics"] = _exchange(port, _get("/metrics"))
    seen["static"] = _exchange(port, _get("/static/screen.js"))
    etag = _head(seen["static"])[1]["etag"][0]
    seen["static 304"] = _exchange(port, _get("/static/screen.js", f"If-None-Match: {etag}\r\n"))
    seen["static 404"] = _exchange(port, _get("/static/nothing.js"))
    seen["static traversal"] = _exchange(port, _get("/static/../http.py"))
    seen["page 404"] = _exchange(port, _get("/screens/no-such-screen"))
    seen["api 404"] = _exchange(port, _get("/api/nothing"))
    seen["405"] = _exchange(port, b"PUT /api/screens HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
                                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 0\r\n\r\n")
    seen["bad query 400"] = _exchange(port, _get(f"/api/screens/{SCREEN}/recommendations?limit=x"))
    seen["admin 401"] = _exchange(port, _post(f"/api/screens/{SCREEN}/refresh", b"", token=None))
    seen["admin 403"] = _exchange(port, _post(f"/api/screens/{SCREEN}/refresh", b"", token="wrong-" + TOKEN))
    seen["admin 200"] = _exchange(port, _post(f"/api/screens/{SCREEN}/refresh", b""))
    # aiohttp's own answers to what it cannot parse (prepared without the app)
    seen["unparsable 400"] = _exchange(port, b"GET / HTTP/1.1\r\nHost: node\r\nX<script>: y\r\n\r\n")
    seen["header too long 400"] = _exchange(port, b"GET / HTTP/1.1\r\nHost: node\r\nX-Big: " + b"v" * 5000
                                            + b"\r\n\r\n")
    seen["duplicate length 400"] = _exchange(port, _post("/api/checkin", b"{}", extra="Content-Length: 2\r\n"))
    # the SSE stream, and the 503 of the stream cap (loopback counts towards max_streams)
    stream = _send(port, _get(f"/api/screens/{SCREEN}/stream", close=False))
    seen["stream"] = _answer(stream, whole=False)
    seen["stream 503"] = _exchange(port, _get(f"/api/screens/{SCREEN}/stream", close=False))
    # the 503 of the connection gate (a device on the store network past max_connections_per_ip)
    held = [_send(port, b"", host=lan, source=lan) for _ in range(2)]
    hub = n.node.signage.hub
    assert _wait(lambda: n.sync(lambda: hub.conn_per_peer.get(lan, 0)) == 2)
    seen["connection 503"] = _exchange(port, _get("/api/health"), host=lan, source=lan)

    want_status = {"page": 200, "screen page": 200, "json": 200, "health HEAD": 200, "metrics": 200, "static": 200,
                   "static 304": 304, "static 404": 404, "page 404": 404, "api 404": 404, "405": 405,
                   "bad query 400": 400, "admin 401": 401, "admin 403": 403, "admin 200": 200,
                   "unparsable 400": 400, "header too long 400": 400, "duplicate length 400": 400, "stream": 200,
                   "stream 503": 503, "connection 503": 503}
    for what, answer in seen.items():
        status, fields = _head(answer)
        if what in want_status:
            assert status == want_status[what], (what, answer[:300])
        else:
            assert status in (403, 404), (what, answer[:300])
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert fields.get("server") == ["shelfcast"], (what, head.decode("latin-1"))
        assert b"aiohttp" not in head.lower() and b"python" not in head.lower(), (what, head)
        assert fields.get("x-content-type-options") == ["nosniff"], (what, head.decode("latin-1"))
    assert b"signage.max_streams)" in seen["stream 503"] and b"signage.max_connections_per_ip" in seen[
        "connection 503"]
    for s in (stream, *held):
        s.close()


def test_a_request_hidden_in_a_body_behind_two_content_lengths_is_refused_not_run(
        make_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # request smuggling: a front end taking one length and the node another (or Transfer-Encoding) would disagree on
    # where the next request starts. The node answers one 400 naming the header and closes; the hidden refresh never
    # runs.
    monkeypatch.setenv("SC_HEADERS_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_HEADERS_TOKEN")

    def refresh_seq() -> int:
        answer = _exchange(n.port, _post(f"/api/screens/{SCREEN}/refresh", b""))
        assert _head(answer)[0] == 200, answer[:300]
        return int(json.loads(answer.split(b"\r\n\r\n", 1)[1])["seq"])

    before = refresh_seq()
    assert refresh_seq() == before + 1  # each refresh that runs moves the screen's seq by one
    hidden = _post(f"/api/screens/{SCREEN}/refresh", b"")
    first = b'{"customer": "c-1"}'
    body = first + hidden
    head = (f"POST /api/checkin HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\n").encode()
    for lengths in (f"Content-Length: {len(first)}\r\nContent-Length: {len(body)}\r\n",
                    f"Content-Length: {len(body)}\r\nContent-Length: {len(first)}\r\n",
                    f"Content-Length: {len(first)}, {len(body)}\r\n",
                    f"Content-Length: {len(first)}\r\nTransfer-Encoding: chunked\r\n",
                    f"Transfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n"):
        answer = _exchange(n.port, head + lengths.encode() + b"\r\n" + body)
        assert answer.count(b"HTTP/1.") == 1 and _head(answer)[0] == 400, (lengths, answer[:400])
        assert b"Content-Length" in answer or b"Transfer-Encoding" in answer, answer  # aiohttp names the header
    assert refresh_seq() == before + 2  # nothing hidden was run
    assert n.get("/api/screens")[0] == 200


def test_no_cors_a_page_elsewhere_cannot_read_the_api_or_send_an_admin_action(make_node: Callable[..., Any]) -> None:
    n = make_node()
    origin = "Origin: http://evil.example\r\n"
    for raw in (_get("/api/health", origin), _get(f"/api/screens/{SCREEN}/recommendations", origin)):
        status, fields = _head(_exchange(n.port, raw))
        assert status == 200 and not any(k.startswith("access-control-") for k in fields), fields
    # the preflight a browser sends before a cross-origin POST carrying an Authorization header fails
    preflight = (f"OPTIONS /api/checkin HTTP/1.1\r\nHost: node\r\nConnection: close\r\n{origin}"
                 "Access-Control-Request-Method: POST\r\n"
                 "Access-Control-Request-Headers: authorization, content-type\r\n\r\n").encode()
    status, fields = _head(_exchange(n.port, preflight))
    assert status >= 400 and not any(k.startswith("access-control-") for k in fields), (status, fields)


def test_error_answers_quote_input_only_as_escaped_text(make_node: Callable[..., Any]) -> None:
    n = make_node()
    evil = "<script>alert(1)</script>"
    quoted = evil.replace("<", "%3C").replace(">", "%3E").replace("(", "%28").replace(")", "%29").replace("/", "%2F")
    status, fields = _head(page := _exchange(n.port, _get(f"/screens/{quoted}")))
    assert status == 404 and fields["content-type"][0].startswith("text/html") and evil.encode() not in page
    status, fields = _head(js := _exchange(n.port, _get(f"/api/screens/{quoted}/recommendations")))
    assert status == 404 and fields["content-type"][0].startswith("application/json"), js[:300]
    assert json.loads(js.split(b"\r\n\r\n", 1)[1])["error"].startswith("there is no screen '<script>")
    status, fields = _head(q := _exchange(n.port, _get(f"/screens/{SCREEN}?orientation={quoted}")))
    assert status == 400 and evil.encode() not in q and b"&lt;script&gt;" in q, q[:600]
    # aiohttp's parse errors quote the raw bytes: as plain text the browser is told never to sniff
    status, fields = _head(raw := _exchange(n.port, b"GET / HTTP/1.1\r\nHost: node\r\nX" + evil.encode()
                                            + b": y\r\n\r\n"))
    assert status == 400 and fields["content-type"][0].startswith("text/plain"), raw[:300]
    assert fields["x-content-type-options"] == ["nosniff"] and fields["cache-control"] == ["no-store"], fields
