"""Live updates over Server-Sent Events: a pick-up reaches the screen; a client that
never reads is dropped while the others keep getting the latest set."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.events import ShopperEvent


class SSEReader(threading.Thread):
    """A well-behaved screen: reads every frame and keeps them (HTTP/1.0: the body is the raw stream)."""

    def __init__(self, port: int, screen: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET /api/screens/{screen}/stream HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        self.frames: list[dict[str, Any]] = []
        self.status = 0
        self.ended = threading.Event()
        self.start()

    def run(self) -> None:
        buf = b""
        event = None
        try:
            head, _, buf = self._read_until(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            assert b"text/event-stream" in head
            while True:
                while b"\n" not in buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                line, _, buf = buf.partition(b"\n")
                text = line.decode()
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: ") and event == "recommendations":
                    self.frames.append(json.loads(text[6:]))
        except OSError:
            pass
        finally:
            self.ended.set()

    def _read_until(self, sep: bytes) -> tuple[bytes, bytes, bytes]:
        buf = b""
        while sep not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed before the headers")
            buf += chunk
        return buf.partition(sep)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in reversed(self.frames):
                if pred(f):
                    return f
            time.sleep(0.01)
        raise AssertionError(f"no matching frame in {len(self.frames)} received")

    def close(self) -> None:
        self.sock.close()


def test_pickup_is_pushed_to_the_screen(make_node: Callable[..., Any]) -> None:
    n = make_node()
    r = SSEReader(n.port, "dairy-screen")
    try:
        first = r.wait_for(lambda f: True)
        assert first["screen"] == "dairy-screen" and first["items"]  # the current set, right away
        n.publish(ShopperEvent(session="sse-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
        f = r.wait_for(lambda f: f["session"] == "sse-1")
        api = n.json("/api/screens/dairy-screen/recommendations")
        assert [i["sku"] for i in f["items"]] == [i["sku"] for i in api["items"]]
        # a burst of picks within one loop tick becomes one push (coalesced), carrying the last state
        def burst() -> None:
            for sku in ("995242", "1106523", "981760"):
                n.node.bus.publish(ShopperEvent(session="sse-1", sku=sku, action="pick", zone="dairy",
                                                shelf="dairy-1", slot=1))
        def coalesced() -> int:  # the recommender ranks the visit once for the burst (or signage merges sets)
            return int(n.node.signage.stats["coalesced"] + n.node.recommender.stats["coalesced"])
        before = coalesced()
        n.sync(burst)
        assert coalesced() >= before + 2
        last = r.wait_for(lambda f: not {"995242", "1106523", "981760"} & {i["sku"] for i in f["items"]}
                          and f["seq"] > first["seq"])
        assert last["session"] == "sse-1"
    finally:
        r.close()


def test_client_that_never_reads_is_dropped_others_unaffected(make_node: Callable[..., Any]) -> None:
    n = make_node()
    n.node.signage.hub.write_timeout_s = 0.5
    stuck = socket.create_connection(("127.0.0.1", n.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /api/screens/dairy-screen/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    good = SSEReader(n.port, "dairy-screen")
    try:
        deadline = time.monotonic() + 20
        skus = ["1029743", "995242", "1106523", "981760", "1133018", "908531"]
        i = 0
        while n.node.signage.hub.stats["dropped_slow"] == 0 and time.monotonic() < deadline:
            for _ in range(20):
                i += 1
                n.publish(ShopperEvent(session=f"flood-{i % 3}", sku=skus[i % 6], action="pick", zone="dairy",
                                       shelf="dairy-1", slot=i % 6))
        assert n.node.signage.hub.stats["dropped_slow"] == 1, n.node.signage.hub.stats
        assert n.node.signage.hub.count("dairy-screen") == 1  # only the good one is left
        # the good client still gets the latest set after the drop
        n.publish(ShopperEvent(session="after-drop", sku="1029743", action="pick", zone="dairy", shelf="dairy-2",
                               slot=0))
        f = good.wait_for(lambda f: f["session"] == "after-drop")
        assert f["seq"] == n.node.screens.latest["dairy-screen"].seq
        # the dropped socket is closed by the node (after what was already in flight)
        stuck.settimeout(5)
        closed = False
        try:
            while stuck.recv(65536):
                pass
            closed = True
        except ConnectionResetError:
            closed = True
        assert closed
    finally:
        stuck.close()
        good.close()


def test_client_disconnect_is_noticed(make_node: Callable[..., Any]) -> None:
    n = make_node()
    r = SSEReader(n.port, "produce-screen")
    r.wait_for(lambda f: True)
    assert n.node.signage.hub.count("produce-screen") == 1
    r.close()
    deadline = time.monotonic() + 5
    while n.node.signage.hub.count("produce-screen") and time.monotonic() < deadline:
        n.publish(ShopperEvent(session="x", sku="1082185", action="pick", zone="produce", shelf="produce-1", slot=0))
        time.sleep(0.05)
    assert n.node.signage.hub.count("produce-screen") == 0
