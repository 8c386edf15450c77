"""Fan-out of encoded screen updates to connected SSE clients.

Fast path: a client whose transport has (almost) nothing buffered gets the
frame written right away, inside the flush that made it (one ``write`` per
client, the chunk framing computed once per frame; no task wake-up).

Slow path: otherwise the frame goes to the client's one-slot mailbox, served
by its writer task: a new frame *replaces* one the client has not taken yet
(latest wins; stale sets are dropped, never queued), so memory per client is
bounded by one frame plus the transport's write buffer. A client whose socket
stops draining (its write is stuck longer than ``write_timeout_s``, or the
transport buffer grows past ``max_buffer``) is disconnected and counted; the
others never wait for it.

Admission: ``refuse`` says whether one more live stream would pass a cap — in total, or per client address
(loopback, the node itself, counts only towards the total). The counts are kept by ``add``/``remove``, so the
check is a dict look-up at connect time; ``offer`` does not see it. ``refuse_connection`` does the same one level
down, for every TCP connection to the screens port (a stream holds one; so do pages, JSON, health and idle
keep-alive ones), counted by ``connection_opened``/``connection_closed``; loopback is never refused there.
``per_ip_exempt`` says which addresses the per-address caps leave out (loopback, and ``signage.trusted_clients``
once the HTTP server sets it); it is asked only when an address is already at a cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Client", "Hub", "direct_send"]

# the transport class whose ``write`` the direct path reproduces (plain TCP; never TLS, whose bytes differ)
_PLAIN = getattr(getattr(asyncio, "selector_events", None), "_SelectorSocketTransport", None)


def direct_send(transport: Any) -> Callable[[bytes], int] | None:
    """The ``send`` of the socket under ``transport`` (the one ``transport.write`` calls), which ``Hub.offer``
    may call itself when the transport has nothing queued; None for any other transport (TLS, uvloop, test
    doubles: they go through ``transport.write``)."""
    if _PLAIN is None or type(transport) is not _PLAIN:
        return None
    sock = getattr(transport, "_sock", None)
    send = getattr(sock, "send", None)
    return send if callable(send) else None


@dataclass(eq=False, slots=True)
class Client:
    screen: str
    peer: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: bytes | None = None
    pending_t: float = 0.0  # perf_counter when ``pending`` was set (push latency)
    closed: bool = False
    transport: Any = None  # set once the headers are out: frames may then be written directly
    chunked: bool = False  # HTTP/1.1 chunked body: direct writes add the chunk framing
    busy: bool = False  # the writer task is mid-write (direct writes must wait: order)
    send: Callable[[bytes], int] | None = None  # its plain socket's ``send``: direct writes skip ``transport.write``
    sent: int = 0
    superseded: int = 0
    connected: float = field(default_factory=time.time)


def is_loopback(peer: str) -> bool:
    """``peer`` (an IP address as text) is this machine's loopback (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


class Hub:
    def __init__(self, *, write_timeout_s: float = 5.0, max_buffer: int = 256 * 1024, direct_limit: int = 32 * 1024,
                 on_sent: Callable[[float], None] | None = None) -> None:
        self.direct_limit = direct_limit
        self.clients: dict[str, set[Client]] = {}
        self.live = 0  # clients added and not removed
        self.per_peer: dict[str, int] = {}  # peer -> live clients (no entry at 0)
        self.write_timeout_s = write_timeout_s
        self.max_buffer = max_buffer
        self.on_sent = on_sent  # called with seconds from offer() to the transport write
        self.stats = {"connected_total": 0, "dropped_slow": 0, "disconnected": 0, "frames_sent": 0,
                      "direct": 0, "superseded": 0, "refused_max_streams": 0, "refused_max_streams_per_ip": 0,
                      "connections": 0, "refused_max_connections": 0, "refused_max_connections_per_ip": 0,
                      "closed_stalled": 0, "refused_header_budget": 0}
        self.conn_per_peer: dict[str, int] = {}  # peer -> open TCP connections to the port (no entry at 0)
        self.per_ip_exempt: Callable[[str], bool] = is_loopback  # left out of the per-address caps (not the totals)

    def count(self, screen: str | None = None) -> int:
        if screen is not None:
            return len(self.clients.get(screen, ()))
        return self.live

    def refuse(self, peer: str, max_total: int, max_per_peer: int) -> str | None:
        """Which cap one more client from ``peer`` would pass: "total", "per_ip", or None (welcome; then ``add`` it
        before the next ``await``, so concurrent connects cannot all slip through). A refusal is counted."""
        if self.live >= max_total:
            self.stats["refused_max_streams"] += 1
            return "total"
        if self.per_peer.get(peer, 0) >= max_per_peer and not self.per_ip_exempt(peer):
            self.stats["refused_max_streams_per_ip"] += 1
            return "per_ip"
        return None

    def refuse_connection(self, peer: str, max_total: int, max_per_peer: int) -> str | None:
        """Which cap one more TCP connection from ``peer`` would pass: "total", "per_ip", or None (welcome; then
        ``connection_opened`` it). Loopback, the node's own kiosk, is never refused (it counts towards the total,
        so it can crowd out the network, never the other way round). A refusal is counted."""
        stats = self.stats
        if stats["connections"] >= max_total:
            if is_loopback(peer):
                return None
            stats["refused_max_connections"] += 1
            return "total"
        if self.conn_per_peer.get(peer, 0) >= max_per_peer and not self.per_ip_exempt(peer):
            stats["refused_max_connections_per_ip"] += 1
            return "per_ip"
        return None

    def connection_opened(self, peer: str) -> None:
        self.stats["connections"] += 1
        self.conn_per_peer[peer] = self.conn_per_peer.get(peer, 0) + 1

    def connection_closed(self, peer: str) -> None:
        left = self.conn_per_peer.get(peer, 0) - 1
        if left < 0:
            return  # not counted (twice is a no-op)
        self.stats["connections"] -= 1
        if left:
            self.conn_per_peer[peer] = left
        else:
            del self.conn_per_peer[peer]

    def add(self, client: Client) -> None:
        group = self.clients.setdefault(client.screen, set())
        if client in group:
            return
        group.add(client)
        self.live += 1
        self.per_peer[client.peer] = self.per_peer.get(client.peer, 0) + 1
        self.stats["connected_total"] += 1

    def remove(self, client: Client) -> None:
        client.closed = True
        group = self.clients.get(client.screen)
        if group is not None and client in group:
            group.discard(client)
            if not group:
                del self.clients[client.screen]
            self.live -= 1
            left = self.per_peer.get(client.peer, 0) - 1
            if left > 0:
                self.per_peer[client.peer] = left
            else:
                self.per_peer.pop(client.peer, None)

    def offer(self, screen: str, frame: bytes, t: float) -> int:
        """Hand ``frame`` to every client of ``screen``; returns how many got it. Never blocks."""
        group = self.clients.get(screen)
        if not group:
            return 0
        chunk: bytes | None = None
        limit = self.direct_limit
        on_sent = self.on_sent
        clock = time.perf_counter
        direct = 0
        try:
            for c in group:  # ~12 clients a set in the e2e bench: attribute look-ups hoisted, counters summed once
                tr = c.transport
                if c.pending is None and not c.busy and tr is not None and not tr.is_closing():
                    queued = tr.get_write_buffer_size()
                    if queued < limit:
                        data = frame
                        if c.chunked:
                            if chunk is None:
                                chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
                            data = chunk
                        send = c.send
                        if queued or send is None:
                            tr.write(data)
                        else:
                            # nothing queued: the one send ``transport.write`` would make, without its Python
                            # checks (~0.5 us a client); a short or failed write goes through the transport,
                            # which queues the rest in order or handles the error as before
                            try:
                                n = send(data)
                            except OSError:
                                n = 0
                            if n < len(data):
                                tr.write(data[n:])
                        c.sent += 1
                        direct += 1
                        if on_sent is not None:
                            on_sent(clock() - t)
                        continue
                if c.pending is not None and c.pending_t >= 0:
                    c.superseded += 1
                    self.stats["superseded"] += 1
                else:
                    c.pending_t = t
                c.pending = frame
                c.wake.set()
        finally:
            if direct:
                stats = self.stats
                stats["frames_sent"] += direct
                stats["direct"] += direct
        return len(group)

    def broadcast(self, frame: bytes) -> None:
        """A frame for everyone (heartbeats): only to clients with nothing pending."""
        for group in self.clients.values():
            for c in group:
                if c.pending is None:
                    c.pending = frame
                    c.pending_t = -1.0  # not a screen update: no latency sample
                    c.wake.set()

    async def serve(self, client: Client, write: Callable[[bytes], Any], buffered: Callable[[], int]) -> str:
        """Write ``client``'s frames until it goes away; returns why it ended."""
        try:
            while not client.closed:
                await client.wake.wait()
                client.wake.clear()
                frame = client.pending
                if frame is None:
                    continue
                t0 = client.pending_t
                client.pending = None
                if buffered() > self.max_buffer:
                    self.stats["dropped_slow"] += 1
                    return "slow"
                client.busy = True
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that comes as the write
                    # completes (a client gone right after its first frame stayed counted until the next ping)
                    async with asyncio.timeout(self.write_timeout_s):
                        await write(frame)
                except TimeoutError:
                    self.stats["dropped_slow"] += 1
                    return "slow"
                except (ConnectionError, RuntimeError):
                    self.stats["disconnected"] += 1
                    return "gone"
                finally:
                    client.busy = False
                client.sent += 1
                self.stats["frames_sent"] += 1
                if self.on_sent is not None and t0 >= 0:
                    self.on_sent(time.perf_counter() - t0)
            return "closed"
        finally:
            self.remove(client)

    def close_all(self) -> None:
        for group in list(self.clients.values()):
            for c in list(group):
                c.closed = True
                c.wake.set()
