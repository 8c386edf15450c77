"""The screens port against a flood of connections that never open a stream, over real sockets.

Every TCP connection counts: in total (``signage.max_connections``) and per client address
(``signage.max_connections_per_ip``); past a cap a new connection gets a 503 naming the key and is closed, while
the connected screens keep updating and the node's own loopback clients are never refused. A client that stops
reading its answers is dropped after ``signage.request_timeout_s`` instead of holding its socket (and the file being
sent) for as long as it stays connected.

Before these caps a flood of idle or slow-header sockets from one LAN address (4,500, reopened as they were closed)
took a real node under LimitNOFILE=4096 to 4,096 descriptors every few seconds: accept() failed, a loopback
/api/health took 5 s, and the log got ~190,000 lines of EMFILE tracebacks in 30 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.config import SignageSection

TOKEN = "connections-token-5e1f9a2c7b"
SCREEN = "dairy-screen"


def _connect(host: str, port: int, source: str | None = None) -> socket.socket:
    s = socket.socket()
    if source is not None:
        s.bind((source, 0))
    s.settimeout(10)
    s.connect((host, port))
    return s


def _read_until_closed(s: socket.socket, timeout: float = 5) -> bytes:
    s.settimeout(timeout)
    buf = b""
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return buf


def _wait(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def _http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _node_config(d: Path, port: int, **signage: Any) -> Path:
    """The demo store (its screens) on ``d``, no camera or shelves, the screens port on all addresses."""
    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    raw["node"]["data_dir"] = str(d / "data")
    raw["camera"] = {"enabled": False}
    raw["shelves"] = {"enabled": False}
    raw["signage"].update({"host": "0.0.0.0", "port": port, "admin_token": "env:SC_CONN_TOKEN", **signage})
    cfg = d / "n.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_idle_sockets_from_one_device_is_capped_and_the_screens_keep_updating(
        tmp_path: Path, node_process: Any, lan: str, monkeypatch: pytest.MonkeyPatch,
        free_port: Callable[[], int], sse_stream: Any) -> None:
    monkeypatch.setitem(node_process.env, "SC_CONN_TOKEN", TOKEN)
    port = free_port()
    p = node_process.start(_node_config(tmp_path, port, max_connections_per_ip=24))
    node_process.wait_running(p)
    assert _wait(lambda: _http(f"http://127.0.0.1:{port}/api/health")[0] == 200, timeout=30)
    screen_lan = sse_stream(lan, port, source=lan)  # a screen on the store network, connected before the flood
    screen_local = sse_stream("127.0.0.1", port)  # the node's own kiosk
    for st in (screen_lan, screen_local):
        assert st.status == 200 and st.wait_for(b"event: recommendations"), st.buf[:300]
    base = _fds(p.pid)

    # one device opens 400 sockets that never send a byte (the node answers nothing until a request is whole)
    flood = [_connect(lan, port, source=lan) for _ in range(400)]
    time.sleep(1.5)  # accepted, refused, refused ones lingered (at most 1 s) and closed
    held = _fds(p.pid) - base
    assert held <= 24, f"the node holds {held} more descriptors for 400 idle sockets of one device"
    # the refused ones were told why, in one line naming the key, and closed
    answers = [_read_until_closed(s, timeout=0.2) for s in flood[-50:]]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(refused) == 50, answers[0][:300]
    body = refused[0].split(b"\r\n\r\n", 1)[1].decode()
    assert body.count("\n") == 1 and "signage.max_connections_per_ip" in body, body
    assert f"{lan} already has 24 open connections" in body and "sudo systemctl restart shelfcast" in body, body
    assert b"Retry-After: 30" in refused[0]

    # the connected screens keep updating, and the node's own clients are never refused (100 more loopback ones)
    local = [_connect("127.0.0.1", port) for _ in range(100)]
    t0 = time.monotonic()
    status, _ = _http(f"http://127.0.0.1:{port}/api/health")
    assert status == 200 and time.monotonic() - t0 < 2
    for _ in range(3):
        status, text = _http(f"http://127.0.0.1:{port}/api/screens/{SCREEN}/refresh", "POST",
                             {"Authorization": f"Bearer {TOKEN}"})
        seq = json.loads(text)["seq"]
        assert status == 200
        for s in (screen_lan, screen_local):
            assert s.more(f"id: {seq}\n".encode()), s.buf[-300:]
    health = json.loads(_http(f"http://127.0.0.1:{port}/api/health")[1])["rooms"]["signage"]["sse"]
    assert health["refused_max_connections_per_ip"] >= 376 and health["refused_max_connections"] == 0, health
    for s in flood + local + [screen_lan.sock, screen_local.sock]:
        s.close()
    out = node_process.stop(p)
    logged = [line for line in out.splitlines() if "max_connections_per_ip" in line]
    assert "Traceback" not in out and len(logged) == 1, out[-2000:]  # 377 refusals: one line a minute


def test_the_total_cap_refuses_the_network_but_never_loopback(make_node: Callable[..., Any], lan: str) -> None:
    n = make_node(host="0.0.0.0", max_streams=4, max_connections=20, max_connections_per_ip=20)
    held = [_connect(lan, n.port, source=lan) for _ in range(20)]
    hub = n.node.signage.hub
    assert _wait(lambda: n.sync(lambda: hub.stats["connections"]) == 20)
    over = _connect(lan, n.port, source=lan)
    answer = _read_until_closed(over)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"signage.max_connections)" in answer and b"already has 20 open connections" in answer, answer
    # the node's own kiosk on loopback is let in past the total, and served
    assert n.get("/api/health")[0] == 200
    assert n.get(f"/api/screens/{SCREEN}/recommendations")[0] == 200
    stats = n.sync(lambda: dict(hub.stats))
    assert stats["refused_max_connections"] == 1 and stats["refused_max_connections_per_ip"] == 0, stats
    metrics = n.get("/metrics")[2]
    assert 'shelfcast_signage_connections_refused_total{limit="max_connections"} 1' in metrics, metrics
    # a device that closes its connections frees their slots
    for s in held[:5]:
        s.close()
    assert _wait(lambda: n.sync(lambda: hub.stats["connections"]) == 15)
    again = _connect(lan, n.port, source=lan)
    again.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _read_until_closed(again).startswith(b"HTTP/1.1 200")
    for s in (*held[5:], over, again):
        s.close()
    assert _wait(lambda: n.sync(lambda: (hub.stats["connections"], dict(hub.conn_per_peer))) == (0, {}))


def _server_side_open(port: int, client_port: int) -> bool:
    """Whether the node still has a socket for the client at ``client_port`` (/proc/net/tcp, loopback)."""
    want_local, want_remote = f":{port:04X}", f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(want_local) and f[2].endswith(want_remote):
            return True
    return False


def test_a_client_that_stops_reading_is_dropped_after_the_request_timeout(make_node: Callable[..., Any]) -> None:
    n = make_node(request_timeout_s=1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the node's sends back up at once
    s.connect(("127.0.0.1", n.port))
    client_port = s.getsockname()[1]
    # 200 pipelined requests for screen.js (sent by sendfile, a file held open while it goes out), never read
    s.sendall(b"GET /static/screen.js HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
    time.sleep(0.5)
    assert _server_side_open(n.port, client_port)
    gone = _wait(lambda: not _server_side_open(n.port, client_port), timeout=8)
    assert gone, "the node still holds the socket of a client that stopped reading 8 s ago (request_timeout_s 1)"
    assert n.sync(lambda: n.node.signage.hub.stats["closed_stalled"]) == 1
    s.close()
    assert n.get("/api/screens")[0] == 200


def test_the_connection_caps_have_defaults_a_store_with_50_screens_never_hits() -> None:
    d = SignageSection()
    # a screen holds one stream and at most Chromium's 6 pooled connections; 50 screens, 3 on one device
    assert d.max_connections >= 50 * 7 + 500 and d.max_connections > d.max_streams
    assert d.max_connections_per_ip >= 3 * 7 and d.max_connections_per_ip > d.max_streams_per_ip
    assert d.max_connections * 2 + 200 <= 4096  # the unit's LimitNOFILE: a socket and a file being sent each
    # a config from before these keys, with raised stream caps, keeps loading: the connection caps follow them
    raised = SignageSection(max_streams=2000, max_streams_per_ip=100)
    assert raised.max_connections > 2000 and raised.max_connections_per_ip > 100


def test_connection_caps_below_the_stream_caps_are_refused_naming_both_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nshelves:\n  enabled: false\n"
                   "signage:\n  max_streams: 100\n  max_connections: 50\n")
    r = subprocess.run([sys.executable, "-m", "edge", "config", "validate", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    assert "signage.max_connections (50) must be above signage.max_streams (100)" in out, out
    assert "at least 116" in out, out
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        SignageSection(max_connections_per_ip=8)  # below max_streams_per_ip (16)
    with pytest.raises(ValueError, match="greater than or equal to 16"):
        SignageSection(max_connections=0)


def test_header_blocks_are_bounded_and_bad_requests_are_one_log_line(make_node: Callable[..., Any],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # aiohttp held up to 128 headers of 8 KiB while a request was unfinished: ~1.9 MB of RSS per connection for
    # request_timeout_s (60 such connections of one device: +111 MB), and logged each bad request as an ERROR
    # with a traceback
    from edge.signage.http import HTTP_LOG, _ClientFaults

    for f in HTTP_LOG.filters:  # its once-a-minute line may have gone to an earlier test in this process
        if isinstance(f, _ClientFaults):
            f.last, f.left_out = -1e9, 0
    n = make_node()
    ok = _connect("127.0.0.1", n.port)
    ok.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900)
                                                                     for i in range(20)) + b"Connection: close\r\n\r\n")
    assert _read_until_closed(ok).startswith(b"HTTP/1.1 200")  # a browser's ~15 headers, and then some
    caplog.set_level("DEBUG")
    for head in ([b"X-%d: v" % i for i in range(40)], [b"X-Big: " + b"v" * 5000]) * 10:
        s = _connect("127.0.0.1", n.port)
        s.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(head) + b"\r\n\r\n")
        answer = _read_until_closed(s)
        s.close()
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
        assert b"Too many headers" in answer or b"Got more than 4096 bytes" in answer, answer  # aiohttp's reason
    noisy = [r for r in caplog.records if r.levelno >= 30 and "request" in r.getMessage()]
    assert len(noisy) == 1 and noisy[0].exc_info is None, [(r.levelname, r.getMessage()) for r in noisy]
    assert "bad HTTP request" in noisy[0].getMessage() and "127.0.0.1" in noisy[0].getMessage()
    assert n.get("/api/screens")[0] == 200
