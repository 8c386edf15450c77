"""The screens port against a hostile or broken client on the store network, over real sockets.

Live SSE streams are capped in total (``signage.max_streams``) and per client address
(``signage.max_streams_per_ip``; the node itself, on loopback, only counts towards the total): past a cap a new
stream is a 503 with ``Retry-After`` and one line naming the limit and the key, while the connected screens keep
getting their updates. A request whose headers or admin body never finish is closed after
``signage.request_timeout_s``; a too-large admin body is a 413 naming the limit.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from edge.config import SignageSection
from edge.events import ShopperEvent

TOKEN = "limits-token-3c9d1a7e5b"
SCREEN = "dairy-screen"


def _recv_all(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    return buf


def _wait(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)
    return pred()


def test_streams_past_the_total_cap_are_a_503_and_the_connected_screens_keep_working(
        make_node: Callable[..., Any], sse_stream: Any) -> None:
    n = make_node(max_streams=3)
    streams = [sse_stream("127.0.0.1", n.port) for _ in range(3)]
    assert [s.status for s in streams] == [200, 200, 200]
    assert all(s.wait_for(b"event: recommendations") for s in streams)
    over = sse_stream("127.0.0.1", n.port)
    assert over.status == 503, over.head
    assert "Retry-After:" in over.head
    body = over.refused_body().decode()  # the server closes the refused connection: this returns
    assert body.count("\n") == 1 and "signage.max_streams)" in body and "serves 3 live" in body, body
    assert n.sync(n.node.signage.hub.count) == 3
    # the connected screens keep getting their updates
    n.publish(ShopperEvent(session="s-cap", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    assert all(s.wait_for(b'"session":"s-cap"') for s in streams)
    # the rest of the node answers
    assert n.get("/api/screens")[0] == 200
    health = n.json("/api/health")["rooms"]["signage"]["sse"]
    assert health["clients"] == 3 and health["refused_max_streams"] == 1
    # a screen that goes away frees its slot
    streams.pop().close()
    assert _wait(lambda: n.sync(n.node.signage.hub.count) == 2)
    again = sse_stream("127.0.0.1", n.port)
    assert again.status == 200
    for s in (*streams, again, over):
        s.close()
    hub = n.node.signage.hub

    def left() -> list[tuple[Any, ...]]:
        return [(c.peer, c.closed, c.sent, c.transport.is_closing(), c.pending) for g in hub.clients.values()
                for c in g]

    assert _wait(lambda: n.sync(hub.count) == 0), n.sync(left)
    assert n.sync(lambda: hub.per_peer) == {}


def test_a_stream_closed_right_after_its_headers_frees_its_slot_at_once(make_node: Callable[..., Any],
                                                                        sse_stream: Any) -> None:
    # asyncio.wait_for on 3.11 lost the cancellation of a client gone during its first frame: it stayed counted
    # (and held a slot) until the next ping, 15 s later
    n = make_node(max_streams=3)
    for _ in range(30):
        s = sse_stream("127.0.0.1", n.port)
        assert s.status == 200
        s.close()
    assert _wait(lambda: n.sync(n.node.signage.hub.count) == 0, timeout=3), n.sync(n.node.signage.hub.count)
    again = [sse_stream("127.0.0.1", n.port) for _ in range(3)]
    assert [s.status for s in again] == [200, 200, 200]
    for s in again:
        s.close()


def test_a_flood_of_streams_past_the_cap_leaves_the_node_bounded(make_node: Callable[..., Any],
                                                                 sse_stream: Any) -> None:
    n = make_node(max_streams=5)
    held = [sse_stream("127.0.0.1", n.port) for _ in range(5)]
    refused = 0
    for _ in range(300):  # each refused attempt is answered and closed by the server, nothing is kept
        s = sse_stream("127.0.0.1", n.port)
        refused += s.status == 503
        s.close()
    assert refused == 300
    hub = n.node.signage.hub
    assert n.sync(hub.count) == 5 and n.sync(lambda: sum(hub.per_peer.values())) == 5
    assert n.json("/api/health")["rooms"]["signage"]["sse"]["refused_max_streams"] == 300
    n.publish(ShopperEvent(session="s-flood", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    assert all(s.wait_for(b'"session":"s-flood"') for s in held)
    for s in held:
        s.close()


def test_streams_per_client_address_are_capped_but_the_node_itself_is_not(make_node: Callable[..., Any],
                                                                         sse_stream: Any, lan: str) -> None:
    n = make_node(host=lan, max_streams=20, max_streams_per_ip=2)
    ok = [sse_stream(lan, n.port) for _ in range(2)]
    assert [s.status for s in ok] == [200, 200]
    over = sse_stream(lan, n.port)
    assert over.status == 503 and "Retry-After:" in over.head
    body = over.refused_body().decode()
    assert "signage.max_streams_per_ip" in body and f"{lan} already has 2 live" in body, body
    assert n.sync(n.node.signage.hub.count) == 2
    for s in ok:
        s.close()
    # loopback (the node's own kiosk, `shelfcast bench`) counts only towards the total
    local = make_node(max_streams=20, max_streams_per_ip=2)
    mine = [sse_stream("127.0.0.1", local.port) for _ in range(6)]
    assert [s.status for s in mine] == [200] * 6
    for s in mine:
        s.close()


def test_the_stream_limits_have_sensible_defaults() -> None:
    d = SignageSection()
    assert d.max_streams >= 500  # `shelfcast bench e2e --screens 500` opens 500 from loopback
    assert 4 <= d.max_streams_per_ip <= 64
    assert 5 <= d.request_timeout_s <= 60


def test_a_request_whose_headers_never_finish_is_closed(make_node: Callable[..., Any]) -> None:
    n = make_node(request_timeout_s=1)
    silent = socket.create_connection(("127.0.0.1", n.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", n.port), timeout=10)
    slow.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    closed_after = None
    slow.settimeout(0.2)
    while time.monotonic() - t0 < 6:  # a header byte every 0.2 s: it never finishes
        try:
            if slow.recv(4096) == b"":
                closed_after = time.monotonic() - t0
                break
        except TimeoutError:
            try:
                slow.sendall(b"X")
            except OSError:
                closed_after = time.monotonic() - t0
                break
    assert closed_after is not None and closed_after < 3, closed_after
    assert _recv_all(silent, timeout=3) == b""  # a connection that sends nothing is closed too
    slow.close()
    silent.close()
    assert n.get("/api/screens")[0] == 200


def _post_head(port: int, length: int, body: bytes, token: str = TOKEN) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /api/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: " + str(length).encode()
              + b"\r\n\r\n" + body)
    return s


def test_an_admin_body_that_never_finishes_is_a_408(make_node: Callable[..., Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_LIMITS_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_LIMITS_TOKEN", request_timeout_s=1)
    t0 = time.monotonic()
    s = _post_head(n.port, 100, b'{"customer": ')
    out = _recv_all(s, timeout=8)  # the 408, then the server closes the connection
    took = time.monotonic() - t0
    s.close()
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert took < 5, took
    err = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
    assert "signage.request_timeout_s" in err and "body" in err, err


def test_a_large_admin_body_is_a_413_naming_the_limit(make_node: Callable[..., Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_LIMITS_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_LIMITS_TOKEN")
    big = json.dumps({"customer": "c-1", "pad": "x" * (1 << 20)}).encode()
    status, ctype, text = n.get("/api/checkin", method="POST", body=big,
                                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert status == 413 and ctype.startswith("application/json"), (status, text[:200])
    err = json.loads(text)["error"]
    assert "64 KiB" in err and '"customer"' in err, err
    # without the token it is refused before the body is read
    status, _, _ = n.get("/api/checkin", method="POST", body=big)
    assert status == 401
    assert n.get("/api/screens")[0] == 200


def test_api_errors_name_the_problem_and_the_fix(make_node: Callable[..., Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_LIMITS_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_LIMITS_TOKEN")
    admin = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    # a wrong method on a known endpoint says which methods it takes
    status, ctype, text = n.get("/api/checkin")
    assert status == 405 and ctype.startswith("application/json"), (status, text)
    assert "POST" in json.loads(text)["error"] and "/api/checkin" in json.loads(text)["error"]
    status, ctype, text = n.get("/api/screens", method="POST", headers=admin, body=b"{}")
    assert status == 405 and "GET" in json.loads(text)["error"]
    # a huge query value is named, not echoed back whole
    status, _, text = n.get(f"/api/screens/{SCREEN}/recommendations?limit=" + "9" * 5000)
    assert status == 400 and "limit" in text and "1..50" in text and len(text) < 400, (status, len(text))
    # a body nested too deep for the JSON parser is a 400, not a 500
    status, _, text = n.get("/api/checkin", method="POST", headers=admin, body=b"[" * 50_000)
    assert status == 400 and "must be JSON" in text, (status, text[:200])
    assert n.get("/api/screens")[0] == 200
