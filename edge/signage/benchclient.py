"""The screens of ``shelfcast bench e2e``: N SSE clients and one MQTT player in their own process.

A real screen and a real MQTT player are devices of their own; here all of them share the node's machine, so the
instrument must take as little CPU as it can, or it is measuring itself. One thread, one epoll loop over plain
non-blocking sockets (the SSE clients and a minimal MQTT 3.1.1 subscriber on a raw socket: no paho thread fighting
the SSE reader for the GIL), and nothing per read but ``recv`` and an append: the time stamp is taken once per
epoll wake-up (every socket in that wake-up had its bytes in its receive buffer by then, so no arrival is stamped
early) and all parsing happens after the run.

A frame is stamped with the wake-up in which its *last* byte arrived (an SSE message's closing blank line; an MQTT
PUBLISH packet's last payload byte). Stamps are ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock in every
process on the machine). Runs until stdin closes, then writes one JSON object to stdout::

    {"sse": {screen#i: [[seq, ns], ...]}, "mqtt": {screen: [[seq, ns], ...]}, "connected": N,
     "reads": R, "wakeups": W, "cpu_util": the reading loop's CPU / its wall time (cores)}
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

SEQ = re.compile(rb'"seq":(\d+)')
FRAME_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")
SCREEN = re.compile(rb'"screen":"([^"]+)"')

MQTT = -1  # the reads list's source index for the MQTT socket


def _mqtt_connect(url: str, topic: str, timeout: float = 5.0) -> socket.socket:
    """CONNECT (clean session, no keep-alive: the run is seconds long) and SUBSCRIBE ``topic`` at QoS 0; returns the
    socket once the SUBACK is in, blocking until then."""
    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    s = socket.create_connection((host, int(port or 1883)), timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = b"shelfcast-bench-player"
    var = b"\x00\x04MQTT\x04\x02\x00\x00"  # protocol level 4, clean session, keep-alive 0
    body = var + struct.pack("!H", len(cid)) + cid
    s.sendall(bytes([0x10]) + _varint(len(body)) + body)
    if _read_packet(s)[0] >> 4 != 2:
        raise RuntimeError("the broker did not answer CONNECT with CONNACK")
    t = topic.encode()
    body = struct.pack("!H", 1) + struct.pack("!H", len(t)) + t + b"\x00"
    s.sendall(bytes([0x82]) + _varint(len(body)) + body)
    while True:
        first, _payload = _read_packet(s)
        if first >> 4 == 9:  # SUBACK (retained PUBLISHes may come first: ignore them, they are not live sets)
            return s


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        buf += chunk
    return buf


def _read_packet(s: socket.socket) -> tuple[int, bytes]:
    first = _read_exact(s, 1)[0]
    n, mult = 0, 1
    while True:
        b = _read_exact(s, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, _read_exact(s, n)


def mqtt_packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(first byte, end offset, body) of every whole MQTT packet in ``data``, in order."""
    out = []
    i, n = 0, len(data)
    while i + 2 <= n:
        first = data[i]
        j, length, mult = i + 1, 0, 1
        while j < n:
            b = data[j]
            j += 1
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        else:
            break
        if j + length > n:
            break
        out.append((first, j + length, data[j:j + length]))
        i = j + length
    return out


def _stamp(chunks: list[tuple[int, bytes]], ends: list[int]) -> list[int]:
    """For each end offset (ascending) into the concatenation of ``chunks``, the stamp of the chunk holding it."""
    out = []
    k, upto = 0, 0
    for end in ends:
        while k < len(chunks) and upto + len(chunks[k][1]) < end:
            upto += len(chunks[k][1])
            k += 1
        out.append(chunks[min(k, len(chunks) - 1)][0])
    return out


def parse_sse(chunks: list[tuple[int, bytes]]) -> list[list[int]]:
    """[[seq, ns], ...]: every SSE message with an ``id:`` line, stamped when its closing blank line arrived."""
    data = b"".join(c for _, c in chunks)
    ids, ends = [], []
    start = 0
    while True:
        cut = data.find(b"\n\n", start)
        if cut < 0:
            break
        m = FRAME_ID.search(data, max(start - 1, 0), cut + 1)  # from the "\n" that ended the previous one
        if m:
            ids.append(int(m.group(1)))
            ends.append(cut + 2)
        start = cut + 2
    return [[i, ns] for i, ns in zip(ids, _stamp(chunks, ends), strict=True)]


def parse_mqtt(chunks: list[tuple[int, bytes]]) -> dict[str, list[list[int]]]:
    """screen -> [[seq, ns], ...] of the live (not retained) PUBLISH packets, stamped at their last byte."""
    data = b"".join(c for _, c in chunks)
    packets = [p for p in mqtt_packets(data) if p[0] >> 4 == 3 and not p[0] & 0x01]
    out: dict[str, list[list[int]]] = {}
    for (_first, _end, body), ns in zip(packets, _stamp(chunks, [p[1] for p in packets]), strict=True):
        m, s = SEQ.search(body), SCREEN.search(body)
        if m and s:
            out.setdefault(s.group(1).decode(), []).append([int(m.group(1)), ns])
    return out


def read_all(port: int, screens: list[str], mqtt_sock: socket.socket | None, stop: threading.Event,
             ready: threading.Event, reads: list[tuple[int, int, bytes]], counts: dict[str, Any]) -> None:
    """The one loop: connect the SSE clients, then ``recv`` whatever is ready, stamping once per wake-up."""
    ep = select.epoll()
    socks: dict[int, tuple[socket.socket, int]] = {}
    for i, screen in enumerate(screens):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /api/screens/{screen}/stream HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        socks[s.fileno()] = (s, i)
    if mqtt_sock is not None:
        mqtt_sock.setblocking(False)
        ep.register(mqtt_sock.fileno(), select.EPOLLIN)
        socks[mqtt_sock.fileno()] = (mqtt_sock, MQTT)
    ready.set()
    cpu0, wall0 = time.thread_time(), time.monotonic()
    now = time.perf_counter_ns
    append = reads.append
    wakeups = 0
    try:
        while not stop.is_set():
            events = ep.poll(0.2)
            if not events:
                continue
            ns = now()
            wakeups += 1
            for fd, _ in events:
                s, i = socks[fd]
                try:
                    chunk = s.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    ep.unregister(fd)
                    continue
                append((i, ns, chunk))
    finally:
        counts["wakeups"] = wakeups
        counts["cpu_util"] = round((time.thread_time() - cpu0) / max(time.monotonic() - wall0, 1e-9), 3)
        for s, _ in socks.values():
            s.close()
        ep.close()


def run_screens(args: argparse.Namespace) -> dict[str, Any]:
    screens = [args.screens[i % len(args.screens)] for i in range(args.clients)]
    mqtt_sock = _mqtt_connect(args.mqtt, args.topic) if args.mqtt else None
    stop, ready = threading.Event(), threading.Event()
    reads: list[tuple[int, int, bytes]] = []
    counts: dict[str, Any] = {}
    reader = threading.Thread(target=read_all, args=(args.port, screens, mqtt_sock, stop, ready, reads, counts),
                              name="bench-screens", daemon=True)
    reader.start()
    ready.wait(30)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    sys.stdin.read()  # until the bench closes our stdin
    stop.set()
    reader.join(5)
    per: dict[int, list[tuple[int, bytes]]] = {}
    for i, ns, chunk in reads:
        per.setdefault(i, []).append((ns, chunk))
    sse = {f"{screen}#{i}": parse_sse(per.get(i, [])) for i, screen in enumerate(screens)}
    mq = parse_mqtt(per.get(MQTT, [])) if mqtt_sock is not None else {}
    return {"sse": sse, "mqtt": mq, "connected": len(screens) if ready.is_set() else 0,
            "reads": len(reads), "wakeups": counts.get("wakeups", 0), "cpu_util": counts.get("cpu_util")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--mqtt", default=None)
    p.add_argument("--topic", default="#")
    p.add_argument("screens", nargs="+")
    args = p.parse_args()
    # this process only appends (~130k reads in a 10 s run): a full collection walking them all stalled the reader
    # for up to ~100 ms and showed up as push latency. Nothing here makes cycles.
    gc.disable()
    res = run_screens(args)
    sys.stdout.write(json.dumps(res))


if __name__ == "__main__":
    main()
