"""The screens of ``shelfcast bench e2e``: N SSE clients and one MQTT subscriber in their own process.

Each received set is stamped with ``time.perf_counter_ns()`` (CLOCK_MONOTONIC,
the same clock in every process on the machine) and its ``seq``. Runs until
stdin closes, then writes one JSON object to stdout::

    {"sse": {screen: [[seq, ns], ...]}, "mqtt": {screen: [[seq, ns], ...]}, "connected": N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from typing import Any

SEQ = re.compile(rb'"seq":(\d+)')
FRAME_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")
SCREEN = re.compile(rb'"screen":"([^"]+)"')


async def sse_client(port: int, screen: str, out: list[list[int]], ready: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/screens/{screen}/stream HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    ready.append(1)
    tail = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            ns = time.perf_counter_ns()  # one stamp per read: cheap, and what a screen would see
            buf = tail + chunk
            for m in FRAME_ID.finditer(buf):
                out.append([int(m.group(1)), ns])
            cut = buf.rfind(b"\n")
            tail = buf[cut + 1:] if cut >= 0 else buf
    finally:
        writer.close()


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


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sse: dict[str, list[list[int]]] = {}
    ready: list[int] = []
    tasks = []
    for i in range(args.clients):
        screen = args.screens[i % len(args.screens)]
        lst: list[list[int]] = []
        sse.setdefault(f"{screen}#{i}", lst)
        tasks.append(asyncio.create_task(sse_client(args.port, screen, lst, ready)))
    mq: dict[str, list[list[int]]] = {}
    client = None
    if args.mqtt:
        ev = threading.Event()
        client = mqtt_subscriber(args.mqtt, args.topic, mq, ev)
        ev.wait(5)
    while len(ready) < args.clients:
        await asyncio.sleep(0.01)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    for t in tasks:
        t.cancel()
    if client is not None:
        client.loop_stop()
    return {"sse": sse, "mqtt": mq, "connected": len(ready)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--mqtt", default=None)
    p.add_argument("--topic", default="#")
    p.add_argument("screens", nargs="+")
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    sys.stdout.write(json.dumps(res))


if __name__ == "__main__":
    main()
