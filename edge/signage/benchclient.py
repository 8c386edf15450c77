"""The screens of ``shelfcast bench e2e``: N SSE clients and one MQTT subscriber in their own process.

Each received set is stamped with ``time.perf_counter_ns()`` (CLOCK_MONOTONIC,
the same clock in every process on the machine) and its ``seq``. Runs until
stdin closes, then writes one JSON object to stdout::

    {"sse": {screen: [[seq, ns], ...]}, "mqtt": {screen: [[seq, ns], ...]}, "connected": N}
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import select
import socket
import sys
import threading
import time
from typing import Any

SEQ = re.compile(rb'"seq":(\d+)')
FRAME_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")
SCREEN = re.compile(rb'"screen":"([^"]+)"')


def sse_clients(port: int, screens: list[str], out: list[list[list[int]]], stop: threading.Event,
                ready: threading.Event) -> None:
    """All SSE clients on one epoll loop with plain non-blocking sockets (no asyncio streams).

    The screens share the machine's cores with the node under test (a real screen is its own
    device), so each read costs as little as possible: ``recv``, one time stamp, one regex pass."""
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, int]] = {}
    for i, screen in enumerate(screens):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /api/screens/{screen}/stream HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        socks[s.fileno()] = (s, i)
    ready.set()
    tails = [b""] * len(screens)
    finditer = FRAME_ID.finditer
    now = time.perf_counter_ns
    try:
        while not stop.is_set():
            for fd, _ in ep.poll(0.2):
                s, i = socks[fd]
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    ep.unregister(fd)
                    continue
                ns = now()  # one stamp per read: cheap, and what a screen would see
                buf = tails[i] + chunk if tails[i] else chunk
                lst = out[i]
                for m in finditer(buf):
                    lst.append([int(m.group(1)), ns])
                cut = buf.rfind(b"\n")
                tails[i] = buf[cut + 1:] if cut >= 0 else buf
    finally:
        for s, _ in socks.values():
            s.close()
        ep.close()


def mqtt_subscriber(url: str, topic: str, out: dict[str, list[list[int]]], ready: threading.Event) -> Any:
    import paho.mqtt.client as mqtt

    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")

    def on_message(c: Any, u: Any, msg: Any) -> None:
        ns = time.perf_counter_ns()
        if msg.retain:
            return
        m, s = SEQ.search(msg.payload), SCREEN.search(msg.payload)
        if m and s:
            out.setdefault(s.group(1).decode(), []).append([int(m.group(1)), ns])

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="shelfcast-bench-player")
    c.on_message = on_message

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(topic, qos=0)
        ready.set()

    c.on_connect = on_connect
    c.connect(host, int(port or 1883))
    c.loop_start()
    return c


def run_screens(args: argparse.Namespace) -> dict[str, Any]:
    sse: dict[str, list[list[int]]] = {}
    screens = [args.screens[i % len(args.screens)] for i in range(args.clients)]
    outs: list[list[list[int]]] = []
    for i, screen in enumerate(screens):
        lst: list[list[int]] = []
        sse.setdefault(f"{screen}#{i}", lst)
        outs.append(lst)
    stop, ready = threading.Event(), threading.Event()
    reader = threading.Thread(target=sse_clients, args=(args.port, screens, outs, stop, ready),
                              name="sse-screens", daemon=True)
    if screens:
        reader.start()
    mq: dict[str, list[list[int]]] = {}
    client = None
    if args.mqtt:
        ev = threading.Event()
        client = mqtt_subscriber(args.mqtt, args.topic, mq, ev)
        ev.wait(5)
    if screens:
        ready.wait(30)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    sys.stdin.read()  # until the bench closes our stdin
    stop.set()
    if screens:
        reader.join(5)
    if client is not None:
        client.loop_stop()
    return {"sse": sse, "mqtt": mq, "connected": len(screens) if ready.is_set() else 0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--mqtt", default=None)
    p.add_argument("--topic", default="#")
    p.add_argument("screens", nargs="+")
    args = p.parse_args()
    # this process only appends stamps (120k small lists in a 10 s run): a full collection walking them all
    # stalled the readers for up to ~100 ms and showed up as push latency. Nothing here makes cycles.
    gc.disable()
    res = run_screens(args)
    sys.stdout.write(json.dumps(res))


if __name__ == "__main__":
    main()
