"""Retained per-screen topics on the store's LOCAL broker, for third-party players.

Topic: ``<topic_prefix>/<store>/<node>/screens/<screen>/recommendations``
(retained, QoS 0, payload schema 1: see ``payload`` and ``docs/signage.md``),
plus ``<topic_prefix>/<store>/<node>/signage/status`` (retained ``online`` /
``offline``, the latter as the broker-side will).

Only the latest set per screen matters, so nothing is queued while the broker
is away: the publisher keeps the latest payload per screen and republishes all
of them (retained) on every (re)connect, with exponential backoff (1 s …
``reconnect_max_s``) between attempts; the HTTP side never waits on it. No
broker configured: the publisher is disabled and says so in health.

paho runs on the node's event loop (``loop_read`` on the socket's reader,
``loop_write`` when the socket has room, ``loop_misc`` every second), not on
its own network thread: a publish is then one ``send`` from the loop, with no
thread to wake and no GIL hand-off per set. Only the blocking TCP connect runs
in a worker thread, before the socket is handed to the loop.

Sets go out at QoS 0: the topic holds latest-wins retained state, a set lost
with a dropped connection is superseded by the next one anyway, and every
screen's latest set is republished on each (re)connect. QoS 1 cost a PUBACK
per set (a read wake-up, ``recv``, parse, in-flight bookkeeping) for nothing
a player could tell apart. A set's PUBLISH packet is built from a per-screen
pre-encoded topic header and written with one ``send`` when paho has nothing
queued; otherwise (a partial write, a full socket) paho's own queue sends it,
in order. The bytes on the wire are a plain MQTT 3.1.1 PUBLISH (retain flag
set, same topic and payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["ScreenPublisher", "screen_topic"]

log = logging.getLogger("shelfcast.signage.mqtt")


def screen_topic(prefix: str, store: str, node: str, screen: str) -> str:
    return f"{prefix}/{store}/{node}/screens/{screen}/recommendations"


_PUBACK_OK = ReasonCode(PacketTypes.PUBACK, "Success")
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


class _BufferedClient(mqtt.Client):
    """paho's client with one ``recv`` per readable socket instead of three per packet, and a plain
    PUBACK reader.

    paho reads a packet as ``recv(1)`` (command), ``recv(1)`` per length byte and ``recv(n)`` (body):
    three syscalls for the PUBACK of every QoS 1 publish, i.e. of every set pushed. Here the first of them
    takes everything that has arrived (up to 64 KiB) and the rest are served from that buffer; paho's
    parsing, acknowledgement and retry logic are untouched. The buffer belongs to one socket: a new
    connection starts empty.
    """

    _rbuf: bytes = b""
    _rbuf_sock: Any = None

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf or self._rbuf_sock is not self._sock:
            buf = super()._sock_recv(65536)  # BlockingIOError when nothing is there, b"" at EOF: as paho's
            if not buf:
                self._rbuf = b""
                return buf
            self._rbuf_sock = self._sock
        if len(buf) <= bufsize:
            self._rbuf = b""
            return buf
        self._rbuf = buf[bufsize:]
        return buf[:bufsize]

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:
        """A PUBACK in MQTT 3.1.1 is just the 2-byte message id: read it without paho's generic decoder
        (which builds a ReasonCode and a Properties object per acknowledgement) and hand it to paho's own
        bookkeeping (``_do_on_publish``: message done, in-flight window, queued messages). MQTT 5 and
        PUBCOMP take paho's path."""
        pkt = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol == mqtt.MQTTv5 or len(pkt) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (pkt[0] << 8) | pkt[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
        return mqtt.MQTT_ERR_SUCCESS

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (``_on_readable`` parses until this is 0), including what a TLS
        socket has decrypted and holds (that raises no readiness on the descriptor either)."""
        if self._rbuf and self._rbuf_sock is self._sock:
            return len(self._rbuf)
        pending = getattr(self._sock, "pending", None)  # ssl.SSLSocket only
        return int(pending()) if pending is not None else 0


# The buffered client overrides paho 2.x internals; a paho without them (the tests pin today's behaviour)
# gets paho's own client, slower but correct, instead of an AttributeError on the first packet.
_PAHO_INTERNALS = ("_sock_recv", "_handle_pubackcomp", "_do_on_publish")
_CLIENT_CLASS: type[mqtt.Client] = (
    _BufferedClient if all(hasattr(mqtt.Client, n) for n in _PAHO_INTERNALS) else mqtt.Client)
# The lean publish writes its own PUBLISH packet and queues a remainder with paho; without these internals
# sets go through ``Client.publish`` (same bytes on the wire).
_LEAN = all(hasattr(mqtt.Client, n) for n in ("_sock_send", "_packet_queue")) and hasattr(mqtt, "PUBLISH")
SET_QOS = 0  # latest-wins retained state; see the module docstring


def _publish_head(topic: str) -> bytes:
    """The part of a retained QoS 0 PUBLISH after the fixed header: the topic as an MQTT string."""
    t = topic.encode()
    return struct.pack("!H", len(t)) + t


def _publish_packet(head: bytes, data: bytes) -> bytes:
    """A retained QoS 0 MQTT PUBLISH: fixed header (0x31, remaining length varint), ``head``, payload."""
    n = len(head) + len(data)
    if n < 128:
        return b"\x31" + bytes((n,)) + head + data
    if n < 16384:
        return b"\x31" + bytes((n & 0x7F | 0x80, n >> 7)) + head + data
    var = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        var.append(b | 0x80 if n else b)
        if not n:
            break
    return b"\x31" + bytes(var) + head + data


class ScreenPublisher:
    def __init__(self, url: str | None, *, prefix: str, store: str, node: str, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, keepalive_s: int = 30,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 reconnect_max_s: float = 30.0) -> None:
        self.url = url
        self.prefix, self.store, self.node = prefix, store, node
        self.status_topic = f"{prefix}/{store}/{node}/signage/status"
        self._latest: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.connected = False
        self.stats = {"published": 0, "skipped_offline": 0, "connects": 0, "disconnects": 0, "errors": 0}
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._keepalive = keepalive_s
        self._reconnect_max = max(1, int(reconnect_max_s))
        self._topic_cache: dict[str, str] = {}
        self._head_cache: dict[str, bytes] = {}
        self._batch: list[bytes] = []  # PUBLISH packets of this loop iteration (``_send_batch``)
        self._loop_thread = 0
        self._sent_info = mqtt.MQTTMessageInfo(0)  # paho marks a queued QoS 0 packet's info published
        self._sent_info._set_as_published()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._fd: Any = None
        self._writing = False
        self.since: float | None = None
        if url is None:
            return
        u = urlparse(url)
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        c = _CLIENT_CLASS(mqtt.CallbackAPIVersion.VERSION2,
                          client_id=client_id or f"shelfcast-signage-{store}-{node}", clean_session=True)
        if username:
            c.username_pw_set(username, password)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        c.will_set(self.status_topic, b"offline", qos=1, retain=True)
        c.max_queued_messages_set(1000)  # only while connected (we skip publishing when offline)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self._client = c

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def topic(self, screen: str) -> str:
        t = self._topic_cache.get(screen)
        if t is None:
            t = self._topic_cache[screen] = screen_topic(self.prefix, self.store, self.node, screen)
        return t

    def start(self) -> None:
        """Begin connecting (call on the event loop); returns at once."""
        if self._client is None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._run(), name="signage-mqtt")

    async def aclose(self) -> None:
        c = self._client
        if c is None:
            return
        self._stopping = True
        if self.connected:
            with contextlib.suppress(Exception):  # best effort on the way out
                self._send_batch()
                c.publish(self.status_topic, b"offline", qos=1, retain=True)
                c.disconnect()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._unwatch()
        self.connected = False

    def stop(self) -> None:
        """Synchronous stop for callers without a loop (tests, tools)."""
        if self._client is not None and self._loop is not None and not self._loop.is_closed():
            self._stopping = True
            self._unwatch()
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self.connected = False

    async def _run(self) -> None:
        """Connect, serve the socket on the loop until it drops, back off, repeat. Never exits on its own."""
        assert self._client is not None and self._loop is not None
        c, loop = self._client, self._loop
        delay = 1.0
        while not self._stopping:
            try:
                await loop.run_in_executor(None, c.connect, self._host, self._port, self._keepalive)
            except (OSError, ValueError) as exc:
                self.last_error = f"cannot reach the local broker {self.url}: {exc}"
                self.stats["errors"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, float(self._reconnect_max))
                continue
            sock = c.socket()
            if sock is None:
                await asyncio.sleep(delay)
                continue
            # no Nagle: without a PUBACK per set to carry the broker's ACK, a set written right after another
            # would wait for the delayed ACK (~40 ms on Linux; measured: the 2nd-6th set of a burst at 42 ms)
            if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._fd = sock
            loop.add_reader(sock, self._on_readable)
            self._want_write()
            try:
                while c.socket() is sock and not self._stopping:
                    await asyncio.sleep(1.0)
                    if c.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                        break
            finally:
                self._unwatch()
            if self.connected:  # lost without paho noticing a clean close
                self._mark_down("connection lost")
            delay = 1.0 if self.stats["connects"] else min(delay * 2, float(self._reconnect_max))
            if not self._stopping:
                await asyncio.sleep(delay)

    def _on_readable(self) -> None:
        c = self._client
        assert c is not None
        for _ in range(64):  # bytes already read into the client's buffer raise no readiness: parse them all
            if c.loop_read() != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
                self._unwatch()
                if self.connected:
                    self._mark_down("connection lost")
                return
            if not getattr(c, "buffered", 0):
                return

    def _on_writable(self) -> None:
        c = self._client
        assert c is not None
        c.loop_write()
        self._want_write()

    def _want_write(self) -> None:
        """paho writes at once when it can; keep a writer only while it has something left to send."""
        c, loop = self._client, self._loop
        if c is None or loop is None or self._fd is None:
            return
        if c.want_write() and not self._writing:
            loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        elif not c.want_write() and self._writing:
            loop.remove_writer(self._fd)
            self._writing = False

    def _unwatch(self) -> None:
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            if self._writing:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(self._fd)
        self._writing = False
        self._fd = None

    def _mark_down(self, why: str) -> None:
        if self.connected and not self._stopping:
            self.stats["disconnects"] += 1
            log.warning("local broker %s lost (%s); reconnecting with backoff", self.url, why)
        self.connected = False
        self.last_error = f"disconnected: {why}"
        self.since = time.time()

    def publish(self, screen: str, data: bytes) -> bool:
        """Remember ``data`` as the screen's latest and publish it retained if connected. Never blocks."""
        with self._lock:
            self._latest[screen] = data
        c = self._client
        if c is None:
            return False
        if not self.connected:
            self.stats["skipped_offline"] += 1
            return False
        if _LEAN and c._protocol != mqtt.MQTTv5:
            head = self._head_cache.get(screen)
            if head is None:
                head = self._head_cache[screen] = _publish_head(self.topic(screen))
            packet = _publish_packet(head, data)
            if self._loop is not None and threading.get_ident() == self._loop_thread:
                # one send per loop iteration for all the sets of a burst: each send wakes the broker (in a
                # py-spy wall-time profile the loop sat in that send longer than in all 12 SSE writes of a set;
                # in CPU time it is a few µs), and the SSE writes of the burst's other screens then go first
                self._batch.append(packet)
                if len(self._batch) == 1:
                    self._loop.call_soon(self._send_batch)
            else:
                self._send(c, packet)
        else:
            info = c.publish(self.topic(screen), data, qos=SET_QOS, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.stats["errors"] += 1
                return False
        self.stats["published"] += 1
        if self._writing or c.want_write():
            self._want_write()
        return True

    def _send_batch(self) -> None:
        """The sets queued in this loop iteration, in order, with one ``send``."""
        batch, self._batch = self._batch, []
        c = self._client
        if not batch or c is None or not self.connected or c.socket() is None:
            return  # the link went down meanwhile: every screen's latest set is republished on reconnect
        self._send(c, batch[0] if len(batch) == 1 else b"".join(batch))
        if self._writing or c.want_write():
            self._want_write()

    def _send(self, c: mqtt.Client, packet: bytes) -> None:
        """One ``send`` when paho has nothing queued (nothing to overtake); what is left (a partial write, a
        full socket, an error) goes to paho's queue, which writes it in order or reports the lost link."""
        if not c._out_packet:
            try:
                n = c._sock_send(packet)
            except OSError:  # a full socket (BlockingIOError), or an error paho's own write below hits again
                n = 0  # and handles as a lost connection
            if n >= len(packet):
                return
            packet = packet[n:]
        c._packet_queue(mqtt.PUBLISH, packet, 0, 0, self._sent_info)

    # -- paho callbacks (on the loop, from loop_read / loop_misc) ----------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("local broker %s refused the connection: %s", self.url, reason)
            return
        self.connected = True
        self.stats["connects"] += 1
        self.last_error = None
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        with self._lock:
            latest = list(self._latest.items())
        for screen, data in latest:
            client.publish(self.topic(screen), data, qos=SET_QOS, retain=True)
            self.stats["published"] += 1
        self._want_write()
        log.info("local broker %s connected; %d screen topics republished", self.url, len(latest))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._mark_down(str(reason))

    def health(self) -> dict[str, Any]:
        if self._client is None:
            return {"status": "disabled", "detail": "no local broker configured (mqtt.local.url)"}
        return {"status": "ok" if self.connected else "degraded", "url": self.url, "connected": self.connected,
                "error": self.last_error, "screens": len(self._latest), **self.stats}
