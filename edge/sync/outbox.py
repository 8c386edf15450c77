"""Drains the SQLite outbox to the cloud broker, in order, at least once.

Every upstream event is in the outbox (``Store.append_event(ev, upstream=…)``)
before anything else happens to it. This drainer, running on the link thread:

- reads rows in ``seq`` order and packs consecutive rows of one topic into a
  batch envelope (``shelfcast.batch/1``), bounded by ``batch_max_events`` and
  by age (a partial batch leaves once its oldest row is ``batch_max_age_ms``
  old);
- compresses a batch with zlib when that saves ≥ 20 %, and keeps every MQTT
  message ≤ ``max_message_bytes`` (128 KB: AWS IoT Core's cap) by splitting;
- publishes QoS 1 with at most ``window`` batches in flight, deletes rows only
  when the broker's PUBACK arrives, and after a reconnect (or a refused
  PUBACK, after a backoff with jitter) starts again from the oldest row not
  acknowledged, so order is kept and nothing is skipped. Duplicates are
  possible (at-least-once); every item carries its idempotency ``id``.

``evict()`` bounds the backlog (row and age caps): the oldest low-priority
rows go first, and every eviction is counted (``meta`` key ``sync.evicted``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.clock import BUILD_FLOOR, SYSTEM, Clock
from edge.store import Store
from edge.sync.inflate import InflateLimit, inflate_bounded

__all__ = ["DrainOptions", "OutboxDrainer", "PayloadTooLarge", "decode_payload", "encode_batch"]

log = logging.getLogger(__name__)

ENVELOPE = "shelfcast.batch/1"
TOPIC_OVERHEAD = 512  # topic, properties and fixed header, generously


@dataclass
class DrainOptions:
    batch_max_events: int = 500
    batch_max_age_ms: int = 200
    max_message_bytes: int = 128 * 1024
    window: int = 8
    compress_min_bytes: int = 1024
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0
    poll_s: float = 0.02


@dataclass
class _Batch:
    seqs: list[int]
    topic: str
    n: int
    size: int
    t: float


def encode_batch(store_id: str, node_id: str, boot: str, rows: list[tuple[int, str]], *,
                 compress_min_bytes: int = 1024, clock_unsynced: bool = False) -> tuple[bytes, bool]:
    """(payload bytes, compressed?) for rows of (seq, event JSON). ``clock_unsynced``: the node's clock was not
    NTP-synchronised (or before the build date) when the batch left; its items' ``t`` may be off."""
    flag = '"clock_unsynced":true,' if clock_unsynced else ""
    head = (f'{{"schema":"{ENVELOPE}","store":{json.dumps(store_id)},"node":{json.dumps(node_id)},'
            f'"boot":"{boot}",{flag}"first_seq":{rows[0][0]},"last_seq":{rows[-1][0]},"items":[')
    raw = (head + ",".join(p for _, p in rows) + "]}").encode()
    if len(raw) >= compress_min_bytes:
        packed = zlib.compress(raw, 6)
        if len(packed) <= 0.8 * len(raw):
            return packed, True
    return raw, False


MAX_DECODED_BYTES = 64 << 20  # a batch's JSON, decompressed (a node's are ~1 MB at most: 128 KB messages)


class PayloadTooLarge(ValueError):
    """A message that decompresses to more than the limit."""


def decode_payload(payload: bytes, properties: Any = None, *, max_bytes: int = MAX_DECODED_BYTES) -> dict[str, Any]:
    """The envelope dict from a message (zlib or plain JSON); raises ValueError on garbage, and on a message that
    decompresses to more than ``max_bytes`` (a zlib bomb: a 1 MB message can inflate to GBs)."""
    compressed = False
    if properties is not None:
        for k, v in getattr(properties, "UserProperty", []) or []:
            if k == "encoding" and v == "zlib":
                compressed = True
    if not compressed and payload[:1] == b"\x78":  # zlib header, for brokers that drop user properties
        compressed = True
    try:
        data: bytes | bytearray = payload
        if compressed:
            try:
                data = inflate_bounded((payload,), max_bytes)  # never more than the limit + 1 in RAM
            except InflateLimit:
                raise PayloadTooLarge(f"more than {max_bytes >> 20} MB decompressed (the limit)") from None
        obj = json.loads(data)
    except PayloadTooLarge:
        raise
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"not a batch envelope: {exc}") from None
    if not isinstance(obj, dict) or obj.get("schema") != ENVELOPE or not isinstance(obj.get("items"), list):
        raise ValueError("not a batch envelope (schema shelfcast.batch/1 with items[])")
    return obj


class OutboxDrainer:
    def __init__(self, store: Store, publish: Callable[..., int | None], *, store_id: str, node_id: str,
                 boot: str, options: DrainOptions | None = None,
                 max_packet: Callable[[], int | None] = lambda: None,
                 receive_max: Callable[[], int] = lambda: 65535,
                 on_error: Callable[[str, str], None] | None = None, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.clock = clock
        self._wall = clock.wall
        self._unsynced = (False, -1e9)  # (clock.unsynced(), monotonic time read): looked up every 5 s
        self.publish = publish
        self.store_id = store_id
        self.node_id = node_id
        self.boot = boot
        self.o = options or DrainOptions()
        self.max_packet = max_packet
        self.receive_max = receive_max
        self.on_error = on_error
        self.inflight: dict[int, _Batch] = {}
        self.cursor = 0
        self._acked: set[int] = set()
        self._acked_lock = threading.Lock()
        self._delete_retry: list[int] = []  # delivered rows whose delete failed (full disk): deleted again later
        self._delete_retry_at = 0.0
        self._retry_at = 0.0
        self._retries = 0
        self._next_poll = 0.0
        self.flushing = False
        self.flush_until = 0.0  # monotonic: partial batches leave at once until then (the flush_outbox command)
        self.stats = {"batches": 0, "events": 0, "bytes": 0, "compressed": 0, "acked_events": 0,
                      "refused": 0, "resends": 0, "oversize": 0}

    # -- connection events (link thread) -------------------------------------------
    def reset(self) -> None:
        """After a (re)connect or a refusal: forget what was in flight, start from the oldest unacked row."""
        if self.inflight:
            self.stats["resends"] += sum(b.n for b in self.inflight.values())
        self.inflight.clear()
        self.cursor = 0
        self._next_poll = 0.0

    def on_publish(self, mid: int, ok: bool, reason: str) -> None:
        b = self.inflight.pop(mid, None)
        if b is None:
            return
        if not ok:
            self.stats["refused"] += 1
            self._retries += 1
            delay = random.uniform(self.o.retry_min_s, min(self.o.retry_max_s, self.o.retry_min_s * 2 ** self._retries))
            log.warning("broker refused a batch of %d events on %s (%s); retrying in %.1f s", b.n, b.topic,
                        reason, delay)
            self._retry_at = time.monotonic() + delay
            self.reset()
            return
        self._retries = 0
        self.stats["acked_events"] += b.n
        with self._acked_lock:
            self._acked.update(b.seqs)
        fut = self.store.outbox_ack(b.seqs)
        seqs = b.seqs
        fut.add_done_callback(lambda f: self._forget(seqs, f))

    def _forget(self, seqs: list[int], fut: Future[int]) -> None:
        if fut.exception() is not None:
            # delivered (PUBACK) but not deleted (a full disk): they stay in _acked, so they are not sent
            # again, and the delete is retried from pump(); forgetting them left the rows in the outbox for
            # good (a backlog that never drained) and re-sent them after the next reconnect
            log.warning("outbox ack of %d delivered rows failed: %s; retrying", len(seqs), fut.exception())
            with self._acked_lock:
                self._delete_retry += seqs
            return
        with self._acked_lock:
            self._acked.difference_update(seqs)

    def _retry_deletes(self, now: float) -> None:
        with self._acked_lock:
            seqs, self._delete_retry = self._delete_retry, []
        if not seqs:
            return
        self._delete_retry_at = now + 1.0
        try:
            fut = self.store.outbox_ack(seqs)
        except Exception as exc:  # the store is closing: the rows stay, the next start re-sends them
            log.warning("outbox ack retry failed: %s", exc)
            return
        fut.add_done_callback(lambda f: self._forget(seqs, f))

    # -- the pump (link thread, connected) --------------------------------------------
    def _limit(self) -> int:
        mp = self.max_packet()
        cap = self.o.max_message_bytes if mp is None else min(self.o.max_message_bytes, int(mp))
        return cap - TOPIC_OVERHEAD

    def pump(self) -> int:
        """Publish what may go now; returns the number of events sent."""
        now = time.monotonic()
        if self._delete_retry and now >= self._delete_retry_at:
            self._retry_deletes(now)
        if now < self._retry_at or now < self._next_poll:
            return 0
        window = max(1, min(self.o.window, self.receive_max()))
        sent = 0
        while len(self.inflight) < window:
            rows = self.store.outbox_peek(limit=self.o.batch_max_events, after_seq=self.cursor)
            with self._acked_lock:
                if self._acked:
                    rows = [r for r in rows if r["seq"] not in self._acked]
            if not rows:
                self._next_poll = now + self.o.poll_s
                break
            # a row stamped "in the future" was stamped before the clock stepped back: it is due, not young (a
            # partial batch used to wait out the whole step, an hour's step an hour, with the upstream stalled)
            age = self._wall() - float(rows[0]["created"])
            if (len(rows) < self.o.batch_max_events and not self.flushing and now >= self.flush_until
                    and 0.0 <= age < self.o.batch_max_age_ms / 1000.0):
                # a young partial batch: let it fill up; look again when it is due (or when it may be full)
                self._next_poll = now + max(self.o.poll_s, self.o.batch_max_age_ms / 1000.0 - age)
                break
            topic = rows[0]["topic"]
            run = []
            for r in rows:
                if r["topic"] != topic:
                    break
                run.append(r)
            n = self._send(topic, run)
            if n < 0:
                break
            sent += n
        return sent

    def _send(self, topic: str, rows: list[dict[str, Any]]) -> int:
        limit = self._limit()
        items = [(int(r["seq"]), str(r["payload"])) for r in rows]
        while True:
            payload, packed = encode_batch(self.store_id, self.node_id, self.boot, items,
                                           compress_min_bytes=self.o.compress_min_bytes,
                                           clock_unsynced=self.clock_unsynced())
            if len(payload) <= limit:
                break
            if len(items) == 1:  # one event larger than a message: it can never go; say so and drop it
                self.stats["oversize"] += 1
                seq = items[0][0]
                log.error("outbox row %d (%d bytes) exceeds the %d-byte message cap; dropped", seq,
                          len(payload), limit)
                if self.on_error is not None:
                    self.on_error(topic, f"event of {len(payload)} bytes exceeds the message cap; dropped")
                self.store.outbox_ack([seq])
                self.cursor = max(self.cursor, seq)
                return 0
            items = items[: len(items) // 2]
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        if packed:
            props.UserProperty = ("encoding", "zlib")
            props.PayloadFormatIndicator = 0
        else:
            props.PayloadFormatIndicator = 1
        mid = self.publish(topic, payload, qos=1, retain=False, properties=props)
        if mid is None:
            return -1
        seqs = [s for s, _ in items]
        self.inflight[mid] = _Batch(seqs=seqs, topic=topic, n=len(seqs), size=len(payload), t=time.monotonic())
        self.cursor = max(self.cursor, seqs[-1])
        self.stats["batches"] += 1
        self.stats["events"] += len(seqs)
        self.stats["bytes"] += len(payload)
        self.stats["compressed"] += int(packed)
        return len(seqs)

    def clock_unsynced(self) -> bool:
        flag, at = self._unsynced
        now = time.monotonic()
        if now - at >= 5.0:
            flag = self.clock.unsynced()
            self._unsynced = (flag, now)
        return flag

    def health(self) -> dict[str, Any]:
        return {"inflight_batches": len(self.inflight), "delete_retry": len(self._delete_retry), **self.stats}


def evict(store: Store, *, max_rows: int, max_age_s: float) -> Future[dict[str, int]]:
    """Bound the backlog: rows older than ``max_age_s`` go, then the lowest-priority oldest over ``max_rows``.

    Ages are in the store's clock, whose steps the store's writer has already applied to this run's rows
    (``Store._follow_clock``, in the same transaction before this runs); rows an unset clock stamped (before
    ``BUILD_FLOOR``) are not aged out, only capped: their stamp says nothing about their age."""
    import sqlite3

    def run(conn: sqlite3.Connection) -> dict[str, int]:
        # cheap checks first (index lookups): this runs every few seconds on a backlog of up to max_rows
        lo, hi = conn.execute("SELECT min(seq), max(seq) FROM outbox").fetchone()
        if lo is None:
            return {"aged": 0, "capped": 0}
        aged = capped = 0
        oldest = conn.execute("SELECT created FROM outbox WHERE seq = ?", (lo,)).fetchone()[0]
        cutoff = store.clock.wall() - max_age_s
        if oldest < cutoff:
            aged = conn.execute("DELETE FROM outbox WHERE created < ? AND created >= ?",
                                (cutoff, BUILD_FLOOR)).rowcount
        n = conn.execute("SELECT count(*) FROM outbox").fetchone()[0] if hi - lo + 1 > max_rows else 0
        if n > max_rows:
            capped = conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY priority ASC, seq ASC LIMIT ?)",
                (n - max_rows,)).rowcount
        if aged or capped:
            row = conn.execute("SELECT value FROM meta WHERE key='sync.evicted'").fetchone()
            total = (int(row[0]) if row else 0) + aged + capped
            conn.execute("INSERT INTO meta (key, value) VALUES ('sync.evicted', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(total),))
        return {"aged": aged, "capped": capped}

    return store.submit(run)
