"""The reference cloud side: ``shelfcast cloud ingest --broker URL --out DIR``.

Subscribes to every node's upstream batches (persistent session, QoS 1),
dedupes items by their idempotency ``id`` (also against Parquet files already
in ``DIR``), and writes new items to Parquet. Messages are acknowledged to
the broker only after the Parquet file holding them is written, so a crash
of this process loses nothing either (the broker re-sends; dedupe absorbs it).
On exit (SIGTERM included) it prints one JSON line: ``received``, ``unique``,
``duplicates``, ``written``, ``messages``, ``bad``, ``other``, ``files``, ``clock_unsynced``, ``clock_shifted``.

Time: ``t`` is when the event happened, the node's stamp plus the item's ``clock_shift`` (a step of the node's
wall clock after the event was stamped; the payload keeps the item as sent, ``clock_shift`` is its own column).
``clock_unsynced`` is true for items of a batch the node flagged ``"clock_unsynced": true`` (NTP not synced when
it left) and for items whose time is before ``edge.clock.BUILD_FLOOR`` (an unset clock): their hour and weekday
are not to be trusted, and ``models/data.py`` drops such rows from a transactions table that carries the column.

Parquet needs ``pyarrow``, which the node install (``pip install -e .``) leaves
out on purpose (heavy, and the Pi never runs this): the ``cloud`` extra brings
it (``pip install -e '.[cloud]'``). Without it ``Ingest`` raises
``MissingDependency`` with that fix before it touches the broker or ``DIR``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.clock import looks_unset
from edge.sync.link import LinkSettings, MqttLink
from edge.sync.outbox import PayloadTooLarge, decode_payload

__all__ = ["Ingest", "MissingDependency", "require_pyarrow"]

log = logging.getLogger(__name__)


class MissingDependency(RuntimeError):
    """A package the cloud side needs does not import; the message says how to install it."""


def require_pyarrow() -> None:
    """Raise ``MissingDependency`` (one line: the problem and the fix) unless ``pyarrow.parquet`` imports."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        pip = f"{sys.executable or 'python3'} -m pip"
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "pyarrow":
            raise MissingDependency(
                "cloud ingest writes Parquet and needs pyarrow, which is not installed (`pip install -e .` leaves "
                f"it out: the node does not need it): run `{pip} install -e '.[cloud]'` in the shelfcast checkout, "
                f"or `{pip} install pyarrow`") from None
        raise MissingDependency(f"pyarrow is installed but does not import ({exc}): reinstall it with "
                                f"`{pip} install --force-reinstall pyarrow`") from None


class Ingest:
    def __init__(self, settings: LinkSettings, out: Path, *, topic: str = "shelfcast/v1/#",
                 flush_s: float = 0.5, max_buffer: int = 20_000) -> None:
        require_pyarrow()  # before anything: no half-started ingest that fails at its first flush
        settings.manual_ack = True
        settings.backoff_max_s = min(settings.backoff_max_s, 5.0)  # one cloud process: come back quickly
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.topic = topic
        self.flush_s = flush_s
        self.max_buffer = max_buffer
        self.link = MqttLink(settings, on_message=self._on_message, on_tick=self._tick,
                             on_disconnected=self._on_disconnected, subscriptions=[topic], name="ingest-link")
        self.seen: set[str] = set()
        self.run_ids: set[str] = set()
        self._buffer: list[dict[str, Any]] = []
        self._acks: list[tuple[int, int]] = []
        self._last_flush = time.monotonic()
        self._files = 0
        self._lock = threading.Lock()
        self.stats = {"received": 0, "unique": 0, "duplicates": 0, "written": 0, "messages": 0, "bad": 0,
                      "other": 0, "files": 0, "too_large": 0, "clock_unsynced": 0, "clock_shifted": 0}
        self._load_seen()

    def _load_seen(self) -> None:
        import pyarrow.parquet as pq

        for f in sorted(self.out.glob("*.parquet")):
            try:
                self.seen.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
            except Exception as exc:
                log.warning("cannot read ids from %s: %s", f, exc)
            self._files += 1

    def start(self) -> None:
        self.link.start()

    def stop(self) -> dict[str, Any]:
        self.link.stop()
        with self._lock:
            self._flush()
        return dict(self.stats)

    # -- link thread ---------------------------------------------------------------------
    def _on_disconnected(self) -> None:
        with self._lock:
            self._flush()
            self._acks.clear()  # those message ids belonged to the old connection; the broker re-sends

    def _on_message(self, topic: str, payload: bytes, msg: Any) -> None:
        self.stats["messages"] += 1
        try:
            env = decode_payload(payload, getattr(msg, "properties", None))
        except PayloadTooLarge as exc:  # a zlib bomb (or a broken node): dropped, counted, said
            self.stats["too_large"] += 1
            log.warning("dropped a message on %s: %s; if a node sends batches that big, lower its "
                        "mqtt.sync.batch_max_events", topic, exc)
            self._acks.append((msg.mid, msg.qos))
            return
        except ValueError:  # availability, state, downstream traffic: not ours to store
            self.stats["other"] += 1
            self._acks.append((msg.mid, msg.qos))
            return
        now = time.time()
        unsynced = env.get("clock_unsynced") is True  # the node's clock was not NTP-synced when the batch left
        with self._lock:
            for item in env["items"]:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    self.stats["bad"] += 1
                    continue
                try:
                    t = float(item.get("t") or 0.0)
                except (TypeError, ValueError):
                    t = 0.0
                shift = item.get("clock_shift")
                shift = float(shift) if isinstance(shift, int | float) and not isinstance(shift, bool) else 0.0
                self.stats["received"] += 1
                iid = item["id"]
                if iid in self.run_ids:
                    self.stats["duplicates"] += 1
                    continue
                self.run_ids.add(iid)
                self.stats["unique"] += 1
                if iid in self.seen:
                    continue
                self.seen.add(iid)
                bad_clock = unsynced or looks_unset(t + shift)
                self.stats["clock_unsynced"] += bad_clock
                self.stats["clock_shifted"] += shift != 0.0
                self._buffer.append({
                    "id": iid, "type": str(item.get("type", "")), "t": t + shift, "clock_shift": shift,
                    "clock_unsynced": bad_clock,
                    "session": None if item.get("session") is None else str(item.get("session")),
                    "topic": topic, "store": str(env.get("store", "")), "node": str(env.get("node", "")),
                    "boot": str(env.get("boot", "")), "payload": json.dumps(item, separators=(",", ":")),
                    "received_at": now,
                })
            self._acks.append((msg.mid, msg.qos))

    def _tick(self) -> None:
        if not self._acks:
            return
        if len(self._buffer) < self.max_buffer and time.monotonic() - self._last_flush < self.flush_s:
            return
        with self._lock:
            self._flush()
            acks, self._acks = self._acks, []
        for mid, qos in acks:
            if qos > 0:
                self.link.ack(mid, qos)

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._buffer = self._buffer, []
        schema = pa.schema([("id", pa.string()), ("type", pa.string()), ("t", pa.float64()),
                            ("session", pa.string()), ("topic", pa.string()), ("store", pa.string()),
                            ("node", pa.string()), ("boot", pa.string()), ("payload", pa.string()),
                            ("received_at", pa.float64()), ("clock_shift", pa.float64()),
                            ("clock_unsynced", pa.bool_())])
        table = pa.Table.from_pylist(rows, schema=schema)  # one schema for every file: they read as one dataset
        self._files += 1
        name = self.out / f"events-{time.strftime('%Y%m%dT%H%M%S')}-{self._files:06d}.parquet"
        tmp = name.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(name)
        self.stats["written"] += len(rows)
        self.stats["files"] += 1
