"""The memory a flood of big request headers can take on the screens port is bounded, over real sockets against a
real ``shelfcast run`` (2026-12-01).

aiohttp keeps a request's header block until it is whole (up to 32 x 4 KiB here), and parses up to 32 pipelined
requests ahead of the one being answered; its parsed copies take about twice the bytes. Measured before the budget
(the demo layout, one LAN address standing in for many devices): 1,024 connections each holding an unfinished 124 KiB
header block took RSS +253 MB (183 -> 436 MB), and 64 connections pipelining such requests without reading their
answers +164..207 MB. Now every connection may have ``HEAD_FREE`` (8 KiB) in flight and the ones holding more share
``HEAD_POOL`` (8 MiB); a connection that would go past it is closed (its first request gets a 503 saying why):
growth stays under 2 x (connections x 8 KiB + 8 MiB), measured +32.6 MB with 1,024 such connections and +69 MB with
3,000 (the largest ``signage.max_connections``).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.signage.http import HEAD_FREE, HEAD_POOL

TOKEN = "budget-token-3a7c9e1f5b2d"
SCREEN = "dairy-screen"
BIG = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 4000) for i in range(31))  # just under aiohttp's limits here
MIB = 1024 * 1024


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"node {pid} has exited")


def _http(url: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {TOKEN}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read().decode()


def _config(d: Path, port: int) -> Path:
    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    raw["node"]["data_dir"] = str(d / "data")
    raw["camera"] = {"enabled": False}
    raw["shelves"] = {"enabled": False}
    # one LAN address stands in for many devices; the unfinished ones are not timed out during the test
    raw["signage"].update({"host": "0.0.0.0", "port": port, "admin_token": "env:SC_BUDGET_TOKEN",
                           "max_connections": 1024, "max_connections_per_ip": 1000, "request_timeout_s": 60})
    cfg = d / "n.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _connect(lan: str, port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up at once: pipelined ones stay queued
    s.bind((lan, 0))
    s.settimeout(5)
    s.connect((lan, port))
    return s


def test_many_connections_with_big_header_blocks_stay_within_the_budget_and_screens_keep_working(
        tmp_path: Path, node_process: Any, lan: str, monkeypatch: pytest.MonkeyPatch,
        free_port: Callable[[], int], sse_stream: Any) -> None:
    monkeypatch.setitem(node_process.env, "SC_BUDGET_TOKEN", TOKEN)
    port = free_port()
    p = node_process.start(_config(tmp_path, port))
    node_process.wait_running(p)
    base_url = f"http://127.0.0.1:{port}"
    screen = sse_stream(lan, port, source=lan)  # a screen on the store network, before the flood
    assert screen.status == 200 and screen.wait_for(b"event: recommendations"), screen.buf[:300]
    # a request bigger than HEAD_FREE is served while the pool has room (20 headers of 900 bytes: 18 KiB)
    with _connect(lan, port) as s:
        s.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(20)) + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200"), "an 18 KiB request was not served with the pool empty"
    time.sleep(0.5)
    base = _rss_mb(p.pid)
    peak = base

    # 320 connections: 256 each send a 124 KiB header block and never finish it; 64 pipeline 40 such requests for
    # screen.js and never read the answers
    flood: list[socket.socket] = []
    for i in range(256):
        s = _connect(lan, port)
        flood.append(s)
        try:
            s.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\n" + BIG)
        except OSError:
            pass  # closed by the node: over the budget
        if i % 32 == 31:
            peak = max(peak, _rss_mb(p.pid))
    pipelined = (b"GET /static/screen.js HTTP/1.1\r\nHost: x\r\n" + BIG + b"\r\n") * 40
    pipes = [_connect(lan, port) for _ in range(64)]
    flood += pipes
    sent = dict.fromkeys(pipes, 0)
    deadline = time.monotonic() + 6
    while sent and time.monotonic() < deadline:  # each sends what its socket takes, round after round
        for s in list(sent):
            try:
                s.setblocking(False)
                sent[s] += s.send(pipelined[sent[s]:sent[s] + 256 * 1024])
            except BlockingIOError:
                pass
            except OSError:
                del sent[s]  # closed by the node
                continue
            if sent[s] >= len(pipelined):
                del sent[s]
        peak = max(peak, _rss_mb(p.pid))
        time.sleep(0.05)
    for _ in range(10):
        time.sleep(0.1)
        peak = max(peak, _rss_mb(p.pid))
    growth = peak - base
    bound = 2 * (len(flood) * HEAD_FREE + HEAD_POOL) / MIB + 8  # ~2x the bytes held, and 8 MB for the rest
    assert growth <= bound, f"RSS grew {growth:.1f} MB ({base:.1f} -> {peak:.1f}) for {len(flood)} connections " \
                            f"with big header blocks; the budget allows {bound:.1f} MB"

    # one more device's first request that does not fit any more is told why (a 503), in one line
    with _connect(lan, port) as s:
        s.sendall(b"GET /api/screens HTTP/1.1\r\nHost: x\r\n" + BIG)  # the pool has less left than one of these
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 503") and b"Server: shelfcast" in answer, answer[:300]
    body = answer.split(b"\r\n\r\n", 1)[1].decode()
    assert body.count("\n") == 1 and "MiB of unfinished requests" in body and "sse.refused_header_budget" in body

    # the node's own clients and the connected screen carry on
    t0 = time.monotonic()
    assert _http(f"{base_url}/api/health")[0] == 200 and time.monotonic() - t0 < 2
    seq = json.loads(_http(f"{base_url}/api/screens/{SCREEN}/refresh", "POST")[1])["seq"]
    assert screen.more(f"id: {seq}\n".encode()), screen.buf[-300:]
    sse = json.loads(_http(f"{base_url}/api/health")[1])["rooms"]["signage"]["sse"]
    assert sse["refused_header_budget"] >= 200, sse
    metrics = _http(f"{base_url}/metrics")[1]
    assert 'shelfcast_signage_connections_refused_total{limit="header_budget"}' in metrics
    for s in flood:
        s.close()
    out = node_process.stop(p)
    logged = [line for line in out.splitlines() if "MiB of unfinished requests" in line]
    assert "Traceback" not in out and len(logged) == 1, out[-2000:]  # hundreds of refusals: one line a minute


def test_a_keep_alive_client_is_charged_only_for_the_request_in_hand(make_node: Callable[..., Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the gate finds where each header block ends in the raw bytes (also an end split across reads, and a body before
    # the next block) and gives its bytes back once aiohttp has handed the request on; a kiosk's keep-alive connection
    # sending thousands of requests must never drift towards the budget
    from edge.signage.http import GATE

    monkeypatch.setenv("SC_BUDGET_TOKEN", TOKEN)
    n = make_node(admin_token="env:SC_BUDGET_TOKEN")
    gate = n.node.signage._runner.app[GATE]
    s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mine = s.getsockname()[1]

    def find() -> Any:
        return next((c for c in gate.open if c.transport.get_extra_info("peername")[1] == mine), None)

    assert _wait_for(lambda: n.sync(find) is not None)
    conn = n.sync(find)
    pad = b"X-Pad: " + b"p" * 3000 + b"\r\n"  # 3 KiB a request: 400 of them are 1.2 MB, far past HEAD_FREE
    body = b'{"customer": "c-keepalive", "screen": "dairy-screen"}'
    checkin = (b"POST /api/checkin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
               + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    for i in range(400):
        req = b"GET /api/screens HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n" if i % 50 else checkin
        # the request in two writes: every third one split inside its closing blank line, the others anywhere
        cut = len(req) - 1 - i % 3 if i % 3 == 0 or i % 50 == 0 else (i * 7) % len(req)
        if i % 50 == 0:
            cut = len(req) - len(body) - 2
        s.sendall(req[:cut])
        if i % 3 == 0:
            time.sleep(0.005)  # they reach the node as two reads
        s.sendall(req[cut:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0] if b"Content-Length: " in answer else 0):
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), (i, answer[:300])
    held, pooled, queued = n.sync(lambda: (conn.held, gate.pooled, len(conn.heads)))
    assert queued == 0 and pooled == 0 and held <= len(pad) + 200, (held, pooled, queued)
    s.close()
    assert _wait_for(lambda: n.sync(lambda: (gate.pooled, len(gate.by_transport))) == (0, 0))


def _wait_for(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()
