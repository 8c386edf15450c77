"""The node's SQLite cache: products, planogram, stock, profiles, sessions,
events, outbox, impressions and the model registry.

Why it looks like this:
- One writer thread owns the only writing connection and commits in batches
  (every ``flush_interval_ms``, at most 500 operations each). No caller ever
  sees "database is locked", and the SD card sees few, larger writes. Inside
  a batch's transaction the writer runs what has queued every 20 ms: not one
  wake-up per operation, and not 500 operations holding the GIL in one go
  (both cost the event loop milliseconds).
- WAL journal with ``synchronous=FULL``: the WAL is fdatasync'ed at every
  COMMIT (one per batch: at most one per ``flush_interval_ms``), so a committed
  batch survives a ``kill -9`` and a power cut; a power cut loses at most the
  open batch, which the writer has not acknowledged yet (futures resolve only
  after COMMIT). ``NORMAL`` (before 2026-12-01) synced only at checkpoints: an
  acknowledged batch could roll back after a power cut.
- Hot-path reads (product, stock, planogram slot, profile) come from in-memory
  dicts kept in step by the writer, so they answer in microseconds without a
  query. Slower reads use a per-thread read connection.
- Forward-only migrations keyed on ``PRAGMA user_version``, with a backup copy
  of the file before any migration of an existing database.
- Check-ins never leave with a reversible hash: at open, told the salt this run hashes with (``demo_salt``, the
  node passes it), check-ins still in the outbox from a run on the public demo salt, or from a ShelfCast that
  did not record its salt (0.3.0 and older also queued demo-salt check-ins with a cloud link, and customer keys
  it had not checked), are removed from the outbox before anything reads it (``_screen_checkins``).
- ``PRAGMA integrity_check`` at open; a corrupt file is moved aside, reported
  in ``health()`` and replaced by a fresh one so the node keeps serving. Only
  the newest ``KEEP_CORRUPT`` set-aside copies stay (each the database's size;
  a dying card would otherwise fill up with them).
- A batch that cannot be written (disk full, I/O error) is not thrown away:
  its event rows and fire-and-forget ops wait in memory (``held``, at most
  ``MAX_HELD``; beyond that the oldest are dropped and counted) and are
  retried with backoff, before anything newer, until the disk takes them
  again; health says ``degraded`` meanwhile. Ops with a future fail
  (``StoreError``): nothing waiting on a commit is told it happened.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import sqlite_utils

from edge.clock import BUILD_FLOOR, SYSTEM, Clock
from edge.events import _Event

__all__ = ["SCHEMA_VERSION", "Product", "Profile", "Store", "StoreDiskError", "StoreError", "StoreNewerError",
           "corrupt_copies", "is_disk_error", "space_fix"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(RuntimeError):
    pass


class StoreDiskError(StoreError):
    """The database cannot be opened because its disk is full or failing (not because the file is bad)."""


class StoreNewerError(StoreError):
    """The database was migrated by a newer ShelfCast (a downgrade): this code must not write it."""


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    department: str = ""
    category: str = ""
    product_type: str = ""
    brand: str = ""
    price: float | None = None
    package_size: str = ""
    unit_weight_g: float | None = None
    sales_heat: float = 0.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A known shopper. ``customer`` is the salted hash, never the raw id."""

    customer: str
    demographics: dict[str, Any] = field(default_factory=dict)
    history: tuple[tuple[str, float, float], ...] = ()  # (sku, unix time, quantity)
    visits: int = 0
    updated: float = 0.0


# Forward-only migrations: index i brings user_version from i to i+1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS products (
            sku TEXT PRIMARY KEY, name TEXT NOT NULL, department TEXT, category TEXT,
            product_type TEXT, brand TEXT, price REAL, package_size TEXT,
            unit_weight_g REAL, sales_heat REAL DEFAULT 0, updated REAL)""",
        """CREATE TABLE IF NOT EXISTS planogram (
            shelf TEXT NOT NULL, slot INTEGER NOT NULL, sku TEXT, updated REAL,
            PRIMARY KEY (shelf, slot))""",
        "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, units INTEGER NOT NULL, updated REAL)",
        """CREATE TABLE IF NOT EXISTS profiles (
            customer TEXT PRIMARY KEY, demographics TEXT NOT NULL DEFAULT '{}',
            history TEXT NOT NULL DEFAULT '[]', visits INTEGER DEFAULT 0, updated REAL)""",
        """CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY, started REAL, ended REAL, zone TEXT, customer TEXT,
            items TEXT NOT NULL DEFAULT '[]')""",
        """CREATE TABLE IF NOT EXISTS events (
            id TEXT PRIMARY KEY, type TEXT NOT NULL, t REAL NOT NULL, session TEXT,
            payload TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS events_t ON events (t)",
        """CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,
            payload TEXT NOT NULL, created REAL NOT NULL, priority INTEGER NOT NULL DEFAULT 1,
            attempts INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE IF NOT EXISTS impressions (
            id TEXT PRIMARY KEY, screen TEXT, session TEXT, skus TEXT, model_version TEXT, t REAL)""",
        "CREATE INDEX IF NOT EXISTS impressions_session ON impressions (session, t)",
        """CREATE TABLE IF NOT EXISTS models (
            version TEXT PRIMARY KEY, path TEXT, sha256 TEXT, installed REAL, status TEXT,
            active INTEGER DEFAULT 0, detail TEXT)""",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
# Tables added after 0.3.2 that an older ShelfCast never reads: created at open (IF NOT EXISTS) without a
# user_version step, so an upgrade takes no backup copy for them and a downgrade still opens the file.
ADDITIVE_TABLES = [
    """CREATE TABLE IF NOT EXISTS promotions (
        sku TEXT NOT NULL, display INTEGER NOT NULL, mailer INTEGER NOT NULL, start TEXT NOT NULL,
        "end" TEXT NOT NULL)""",
]

_STOP = object()
APPLY_SLICE_S = 0.02  # the writer runs queued ops this often inside the open batch (see _write_loop)
NUDGE_MIN_S = 0.015  # ``nudge`` starts a slice early only this long after the last one began
KEEP_CORRUPT = 2  # corrupt databases kept beside the live one for support (the newest); older ones are removed
MAX_HELD = 50_000  # event rows / ops kept in memory while the disk refuses writes (~0.5-1 KB each)
RETRY_MIN_S, RETRY_MAX_S = 0.25, 5.0  # backoff between attempts to write what is held
# errors of the disk, not of one op: the whole batch waits and is retried (sqlite3 result codes)
_DISK_ERRORS = {10, 13, 14}  # SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
# meta: the salt ("demo" / "retailer") of the run whose check-ins may be in the outbox (see _screen_checkins)
CHECKIN_SALT_KEY = "outbox.checkin_salt"


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any] | None


class Store:
    """Open with ``Store(path).open()``; always ``close()`` (flushes the last batch)."""

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval_ms: int = 50,
        retention_days: float = 14.0,
        max_events: int = 2_000_000,
        max_batch: int = 500,
        clock: Clock = SYSTEM,
        demo_salt: bool | None = None,
    ) -> None:
        """``demo_salt``: whether this run hashes customer ids with the public demo salt (the node passes
        ``fusion.uses_demo_salt()``); given, check-ins queued by a run on the demo salt are removed from the outbox
        at open (``_screen_checkins``). None (tools, tests): the outbox is left as it is."""
        self.path = Path(path)
        self._demo_salt = demo_salt
        self.clock = clock  # wall time for stamps and ages; its steps are noticed by the writer (_follow_clock)
        self._wall = clock.wall
        self._jumps = clock.watch()
        self._clock_shift = 0.0  # a step not yet applied to the rows (the disk refused it): retried
        self._since: tuple[int, int, int] | None = None  # last outbox seq / events / impressions rowid before open
        self.flush_interval = flush_interval_ms / 1000.0
        self.retention_s = retention_days * 86400.0
        self.max_events = max_events
        self.max_batch = max_batch
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._products: dict[str, Product] = {}
        self.catalogue_gen = 0  # bumped by every product change: the ranker re-reads the catalogue when it moves
        self._stock: dict[str, int] = {}
        self._planogram: dict[tuple[str, int], str | None] = {}
        self._profiles: dict[str, Profile] = {}
        # the promotion plan: (sku, display, mailer, start, end) rows, replaced whole; the plan of one day is cached
        # as ((rows, day), mapping) so the hot path is one tuple compare (see promotion_plan)
        self._promotions: tuple[tuple[str, bool, bool, date, date], ...] = ()
        self._plan: tuple[tuple[Any, date | None], Mapping[str, str] | None] = (((), None), None)
        self._health: dict[str, Any] = {"status": "closed", "recovered_from": None, "migrated_from": None}
        self._counters = {"batches": 0, "ops": 0, "errors": 0, "dropped": 0}
        self._held: collections.deque[Any] = collections.deque()  # writer thread only (see _write_loop)
        self._retry_at = 0.0
        self._retry_wait = RETRY_MIN_S
        self._last_maintenance = 0.0
        self._closed = True
        self._closing = threading.Event()
        self._kick = threading.Event()  # wakes the writer for its next slice early (nudge, close)
        self._slice_at = 0.0  # monotonic time the writer last ran a slice

    # -- lifecycle ---------------------------------------------------------
    def open(self) -> Store:
        """Raises ``StoreDiskError`` (with the fix) when the disk is full or failing: the file is kept (corrupt
        copies set aside earlier are removed first, and the open tried once more)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                self._check_integrity()
                self._prune_corrupt()
                conn = self._connect()
                try:
                    self._migrate(conn)
                    for stmt in ADDITIVE_TABLES:
                        conn.execute(stmt)
                    if self._demo_salt is not None:
                        self._screen_checkins(conn, self._demo_salt)
                    self._load_caches(conn)
                    self._since = tuple(int(conn.execute(q).fetchone()[0] or 0) for q in (  # type: ignore[assignment]
                        "SELECT max(seq) FROM outbox", "SELECT max(rowid) FROM events",
                        "SELECT max(rowid) FROM impressions"))
                except BaseException:
                    conn.close()
                    raise
                break
            except sqlite3.Error as exc:
                if not is_disk_error(exc):
                    raise
                if attempt == 1 and self._prune_corrupt(keep=0):
                    continue  # a full card: the corrupt copies kept for support go before the node stops serving
                msg = (f"cannot open {self.path}: {exc}; node.data_dir {self.path.parent} is full or failing: free "
                       f"space (`df -h {self.path.parent}`; {space_fix(self.path.parent)}) or replace the SD card")
                self._health.update(status="failed", last_error=msg)
                raise StoreDiskError(msg) from None
        self._closed = False
        self._closing = threading.Event()
        self._kick = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="store-writer", daemon=True)
        self._writer.start()
        self._health["status"] = "ok"
        self.submit(self._maintenance)
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._closing.set()  # the writer commits what it has now, not at the end of its interval
        self._kick.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._health["status"] = "closed"

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            if readonly:
                conn.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()  # a half-open connection would keep the file's shared memory (and its error) alive
            raise
        return conn

    def _check_integrity(self) -> None:
        if not self.path.exists():
            return
        problem: str | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
                if [r[0] for r in rows] != ["ok"]:
                    problem = "; ".join(str(r[0]) for r in rows[:5])
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if is_disk_error(exc):  # a full or failing disk, not a bad file: never move a good database aside
                raise
            problem = str(exc)
        if problem is None:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while any(Path(str(aside) + sfx).exists() for sfx in ("", "-wal", "-shm")):  # never overwrite a copy
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                shutil.move(src, Path(str(aside) + suffix))
        log.error("database %s failed its integrity check (%s); moved aside to %s and started fresh",
                  self.path, problem, aside)
        self._health["recovered_from"] = {"path": str(aside), "problem": problem, "t": time.time()}

    def _prune_corrupt(self, keep: int = KEEP_CORRUPT) -> list[str]:
        """Keep the newest ``keep`` corrupt copies set aside beside the database, remove the older ones; returns
        the names removed.

        Each is the database's size (up to ~700 MB at the ``store.max_events`` cap) and nothing else ever removed
        them: a card that keeps corrupting (a dying card, power cuts) filled up with them. The one just set aside
        is kept whatever its name's stamp says (an unset clock). ``keep=0``: the card is full, they all go. A copy
        that cannot be removed is logged, never fatal: the node serves from the fresh database either way."""
        copies = corrupt_copies(self.path)
        just = (self._health.get("recovered_from") or {}).get("path")
        copies.sort(key=lambda p: str(p) == just)  # stable: by name (time), the one just set aside last
        removed: list[str] = []
        for old in copies[:len(copies) - keep]:
            try:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(old) + suffix).unlink(missing_ok=True)
                removed.append(old.name)
            except OSError as exc:
                log.warning("cannot remove the old corrupt copy %s (%s); remove it: `sudo rm -f %s*`",
                            old, exc.strerror, old)
        kept = [p.name for p in copies if p.name not in removed]
        if removed and keep == 0:
            log.warning("%s is full or failing: removed the corrupt copies kept for support (%s) to make room",
                        self.path.parent, ", ".join(removed))
        elif removed:
            log.warning("removed %d older corrupt copies of %s (%s); kept the newest %s. The database was found "
                        "corrupt more than once: the SD card is suspect, replace it", len(removed), self.path.name,
                        ", ".join(removed), ", ".join(kept))
        self._health["corrupt_copies"] = kept
        return removed

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            # a downgrade after an upgrade that migrated: the copy that upgrade made is the way back to this code
            backup = self.path.with_name(f"{self.path.name}.v{SCHEMA_VERSION}.bak")
            back = (f"; to stay on this version, restore the copy made before the upgrade (what the node recorded "
                    f"since is lost): `sudo systemctl stop shelfcast && sudo cp -p {backup} {self.path} && "
                    f"sudo rm -f {self.path}-wal {self.path}-shm && sudo systemctl start shelfcast`"
                    if backup.exists() else "")
            raise StoreNewerError(
                f"{self.path} has schema version {version}, newer than this ShelfCast ({SCHEMA_VERSION}); "
                "upgrade ShelfCast or point node.data_dir at another directory" + back
            )
        if version == SCHEMA_VERSION:
            return
        taken: Path | None = None
        if version > 0:
            backup = taken = self.path.with_name(f"{self.path.name}.v{version}.bak")
            dst = sqlite3.connect(backup)
            with dst:
                conn.backup(dst)
            dst.close()
            self._health["migrated_from"] = {"version": version, "backup": str(backup)}
        for v in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={v + 1}")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
        if taken is not None:
            # one migration backup is kept, the one just taken: it is what going back to the code before this
            # upgrade restores (the refusal above names it, the technician guide's downgrade copies it back).
            # Older ones are copies of schemas no installed venv runs any more, each the database's size.
            for old in self.path.parent.glob(f"{self.path.name}.v*.bak"):
                if old != taken and old.name[len(self.path.name) + 2:-4].isdigit():
                    old.unlink(missing_ok=True)
                    log.info("removed the older migration backup %s (kept %s)", old, taken.name)

    def _screen_checkins(self, conn: sqlite3.Connection, demo_salt: bool) -> int:
        """Start-up step, before anything reads the outbox: check-ins (their customer hash) queued by a run on the
        public demo salt, or by a ShelfCast that did not record its salt (``CHECKIN_SALT_KEY`` unset: 0.3.0 and
        older, which queued demo-salt check-ins even with a cloud link), are removed from the outbox, so they never
        leave the node; anyone can reverse a demo-salt hash by hashing every loyalty number. A queued hash does not
        say which salt made it, so all of that run's are removed (those of a retailer-salt node upgraded from 0.3.0
        with the link down too: once). Their ``events`` rows stay on the node until ``retention_days``. Counted in
        ``health()["outbox_checkins_dropped"]``, logged once; returns the count."""
        row = conn.execute("SELECT value FROM meta WHERE key=?", (CHECKIN_SALT_KEY,)).fetchone()
        before = row[0] if row is not None else None
        now = "demo" if demo_salt else "retailer"
        n = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            if before != "retailer":
                n = conn.execute(
                    "DELETE FROM outbox WHERE payload LIKE '%\"checkin\"%' AND CASE WHEN json_valid(payload) THEN "
                    "json_extract(payload, '$.type') END = 'checkin'").rowcount
            if before != now:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (CHECKIN_SALT_KEY, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._health["outbox_checkins_dropped"] = n
        if n:
            why = "a run on the public demo salt" if before == "demo" else "an earlier ShelfCast (0.3.0 or older)"
            log.warning("outbox: removed %d check-in(s) queued by %s: a demo-salt customer hash can be reversed, so "
                        "they never leave this node (their visits' picks still go up)", n, why)
        return n

    def _load_caches(self, conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn)
        for r in db.query("SELECT * FROM products"):
            self._products[r["sku"]] = _product_from_row(r)
        for r in db.query("SELECT sku, units FROM stock"):
            self._stock[r["sku"]] = int(r["units"])
        for r in db.query("SELECT shelf, slot, sku FROM planogram"):
            self._planogram[(r["shelf"], int(r["slot"]))] = r["sku"]
        for r in db.query("SELECT * FROM profiles"):
            self._profiles[r["customer"]] = _profile_from_row(r)
        self._promotions = tuple(
            (r["sku"], bool(r["display"]), bool(r["mailer"]), date.fromisoformat(r["start"]),
             date.fromisoformat(r["end"]))
            for r in db.query('SELECT sku, display, mailer, start, "end" FROM promotions ORDER BY rowid'))

    # -- the single writer -------------------------------------------------
    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            if self._held:  # the disk refused the last batch: retry what it holds first, in order
                first = self._next_held()
                if first is _STOP:
                    break
                if first is None:
                    continue
            else:
                first = self._q.get()
                if first is _STOP:
                    break
            # One transaction (one COMMIT: SD wear) per ``flush_interval``, but the ops run as they come, a
            # slice at a time: a wake-up every APPLY_SLICE_S, not one per op (each wake-up takes the GIL from
            # the event loop), and not all 500 at the end (holding the GIL for 5-30 ms in one go starved the
            # loop: push p99 ~9 ms at 1,000 picks/s, ~3 ms with slices).
            batch: list[Any] = [first]
            results: list[tuple[_Op, Any, BaseException | None]] = []
            deadline = time.monotonic() + self.flush_interval
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._follow_clock(conn)
                self._apply(conn, batch, results)
                while True:
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._kick.wait(min(left, APPLY_SLICE_S))
                        self._kick.clear()
                    self._slice_at = time.monotonic()
                    chunk: list[Any] = []
                    while self._held and len(batch) + len(chunk) < self.max_batch:
                        chunk.append(self._held.popleft())
                    while not self._held and len(batch) + len(chunk) < self.max_batch:
                        try:
                            item = self._q.get_nowait()
                        except queue.Empty:
                            break
                        if item is _STOP:
                            stop = True
                            break
                        chunk.append(item)
                    if chunk:
                        self._apply(conn, chunk, results)
                        batch += chunk
                    if stop or len(batch) >= self.max_batch or time.monotonic() >= deadline:
                        break
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._batch_failed(conn, batch, exc)
            else:
                self._batch_done(batch, results)
            if time.monotonic() - self._last_maintenance > 3600:
                self._run_batch(conn, [_Op(self._maintenance, None)])
        # drain anything queued after STOP was requested (after what the disk refused so far)
        rest: list[Any] = list(self._held)
        self._held.clear()
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._run_batch(conn, rest)
        if self._held:
            log.error("store closed with %d writes the disk would not take; they are lost", len(self._held))
            self._counters["dropped"] += len(self._held)
            self._held.clear()
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        conn.close()

    def _follow_clock(self, conn: sqlite3.Connection) -> None:
        """The wall clock stepped (NTP after a boot at a wrong time, or a manual change): re-stamp the rows this
        process wrote before the step by the same amount, so ages stay elapsed time, and add the step to their
        outbox payloads (``"clock_shift"``: the event happened at ``t + clock_shift``). Without it a step forward
        of a year aged out the whole outbox and the events table at the next look, and a step back kept rows
        past their time. Rows of earlier runs are left alone (their stamps came from their own clock); those an
        unset clock stamped (before ``BUILD_FLOOR``) are exempt from ageing (``_maintenance``, ``evict``).
        Rows stamped after the step but before the writer's next batch (at most one batch, ~0.5 s) get the
        shift too. Runs inside the writer's open transaction, before the batch's own operations."""
        d = self._jumps.check()
        if d:
            log.warning("the wall clock stepped by %+.1f s; re-stamping this run's events, outbox and impressions",
                        d)
            self._counters["clock_steps"] = self._counters.get("clock_steps", 0) + 1
            self._health["clock_step"] = {"s": round(d, 3), "t": self._wall()}
        shift = self._clock_shift + d
        if not shift or self._since is None:
            return
        seq, ev, imp = self._since

        def move(c: sqlite3.Connection) -> None:
            c.execute("UPDATE outbox SET created = created + ? WHERE seq > ?", (shift, seq))
            # the cloud gets the stamp as made and, beside it, the step since: t + clock_shift is the time
            c.execute("UPDATE outbox SET payload = json_set(payload, '$.clock_shift', "
                      "round(coalesce(json_extract(payload, '$.clock_shift'), 0) + ?, 3)) WHERE seq > ? AND "
                      "CASE WHEN json_valid(payload) THEN json_type(payload) = 'object' ELSE 0 END", (shift, seq))
            c.execute("UPDATE events SET t = t + ? WHERE rowid > ?", (shift, ev))
            c.execute("UPDATE impressions SET t = t + ? WHERE rowid > ?", (shift, imp))

        _, err = _in_savepoint(conn, move)
        self._clock_shift = shift if err is not None else 0.0

    def _next_held(self) -> Any:
        """The first held item once its retry is due; until then new items queue up behind the held ones
        (order is kept). None: nothing due yet (call again); ``_STOP``: close."""
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                return None
            if item is _STOP:
                return _STOP
            self._hold([item])
            return None
        return self._held.popleft()

    def _hold(self, items: Iterable[Any]) -> None:
        """Keep ``items`` (after those already held) for the next attempt; drop the oldest over MAX_HELD."""
        self._held.extend(items)
        over = len(self._held) - MAX_HELD
        if over > 0:
            for _ in range(over):
                self._held.popleft()
            self._counters["dropped"] += over
            log.error("store: %d writes dropped (more than %d waiting for the disk)", over, MAX_HELD)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        """``batch`` in one transaction (maintenance, the last ops at close)."""
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._apply(conn, batch, results)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._batch_failed(conn, batch, exc)
            return
        self._batch_done(batch, results)

    def _apply(self, conn: sqlite3.Connection, ops: list[Any],
               results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        """Run ``ops`` inside the open transaction, each in a savepoint: one bad op must not sink the batch.

        Event rows (``record_event``'s plain tuples) are written a run at a time in queue order, in one
        savepoint and a few multi-row statements: each statement releases and re-takes the GIL, and per
        event the writer used to run five (savepoint, event, outbox, stock, release)."""
        run: list[_EventRow] = []
        for op in ops:
            if type(op) is tuple:
                run.append(op)
                continue
            if run:
                self._apply_rows(conn, run)
                run = []
            res, exc = _in_savepoint(conn, op.fn)  # one bad op must not sink the batch
            if exc is not None:
                _raise_disk_error(exc)  # ...but a full or failing disk sinks it: it is retried whole
                self._counters["errors"] += 1
            results.append((op, res, exc))
        if run:
            self._apply_rows(conn, run)

    def _apply_rows(self, conn: sqlite3.Connection, rows: list[_EventRow]) -> None:
        """Event rows in one savepoint; if that fails, row by row (one bad row must not sink the others)."""
        exc = _in_savepoint(conn, _write_rows, rows)[1]
        if exc is None:
            return
        _raise_disk_error(exc)
        for row in rows:
            _, exc = _in_savepoint(conn, _write_rows, (row,))
            if exc is not None:
                _raise_disk_error(exc)
                self._counters["errors"] += 1
                log.warning("store write failed: %s", exc)

    def _batch_failed(self, conn: sqlite3.Connection, batch: list[Any], exc: sqlite3.Error) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._counters["errors"] += len(batch)
        self._health["last_error"] = str(exc)
        self._health["status"] = "degraded"
        # event rows and fire-and-forget ops (nobody waits on them) are kept and retried; a waiting caller
        # is told the write failed
        keep = [op for op in batch if type(op) is tuple or op.future is None]
        for op in batch:
            if type(op) is not tuple and op.future is not None and not op.future.done():
                op.future.set_exception(StoreError(f"write failed: {exc}"))
        if keep:
            self._held.extendleft(reversed(keep))  # before anything held later: order is kept
            self._hold(())
            self._retry_at = time.monotonic() + self._retry_wait
            self._retry_wait = min(RETRY_MAX_S, self._retry_wait * 2)
        log.error("store batch of %d failed: %s; %d writes held for a retry%s", len(batch), exc, len(self._held),
                  " (free space in node.data_dir)" if is_disk_error(exc) else "")

    def _batch_done(self, batch: list[Any], results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        """After COMMIT: counters, then the futures (only now is a write "accepted")."""
        self._counters["batches"] += 1
        self._counters["ops"] += len(batch)
        self._retry_at = 0.0
        self._retry_wait = RETRY_MIN_S
        if self._health["status"] == "degraded" and not self._held:
            self._health["status"] = "ok"
        for op, res, err in results:
            if op.future is None:
                if err is not None:
                    log.warning("store write failed: %s", err)
                continue
            if op.future.done():  # cancelled by its caller (a timed-out await): the write is in anyway
                continue
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(res)

    def nudge(self) -> None:
        """Run the writer's next slice now rather than at its own time (at most every ``NUDGE_MIN_S``).

        The event loop calls this when it has just pushed a burst's sets and is about to wait for the next
        frames: a slice started then takes the GIL from an idle loop instead of from the middle of a burst
        (measured in ``bench e2e``: a ranking overlapping a writer slice took ~0.1 ms longer)."""
        if time.monotonic() - self._slice_at >= NUDGE_MIN_S and not self._kick.is_set():
            self._kick.set()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run ``fn(conn)`` inside the writer's next batch; the future resolves after COMMIT."""
        if self._closed and self._writer is not None:
            raise StoreError("store is closed")
        fut: Future[T] = Future()
        self._q.put(_Op(fn, fut))
        return fut

    def _fire(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self._q.put(_Op(fn, None))

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything submitted so far is committed."""
        self.submit(lambda c: None).result(timeout)

    # -- reads: a connection per thread -------------------------------------
    def read(self) -> sqlite_utils.Database:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
        return sqlite_utils.Database(conn)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(self.read().query(sql, params))

    # -- products / planogram / stock (hot-path reads from memory) ----------
    def product(self, sku: str) -> Product | None:
        return self._products.get(sku)

    def products(self) -> dict[str, Product]:
        return self._products

    def stock(self, sku: str) -> int | None:
        """Units on hand, or None when the node has no stock figure for it."""
        return self._stock.get(sku)

    def planogram_slot(self, shelf: str, slot: int) -> str | None:
        return self._planogram.get((shelf, slot))

    def planogram(self) -> dict[tuple[str, int], str | None]:
        return self._planogram

    def upsert_products(self, products: Iterable[Product]) -> Future[int]:
        rows = [
            {**{k: getattr(p, k) for k in Product.__slots__}, "updated": time.time()}
            for p in products
        ]
        for p in rows:
            self._products[p["sku"]] = _product_from_row(p)
        self.catalogue_gen += 1

        def write(conn: sqlite3.Connection) -> int:
            sqlite_utils.Database(conn)["products"].upsert_all(rows, pk="sku")  # type: ignore[union-attr]
            return len(rows)

        return self.submit(write)

    def set_planogram(self, entries: Iterable[tuple[str, int, str | None]]) -> Future[int]:
        now = time.time()
        items = [(str(s), int(n), sku) for s, n, sku in entries]
        for s, n, sku in items:
            self._planogram[(s, n)] = sku
        rows = [{"shelf": s, "slot": n, "sku": sku, "updated": now} for s, n, sku in items]

        def write(conn: sqlite3.Connection) -> int:
            sqlite_utils.Database(conn)["planogram"].upsert_all(rows, pk=("shelf", "slot"))  # type: ignore[union-attr]
            return len(rows)

        return self.submit(write)

    def set_stock(self, levels: dict[str, int]) -> Future[int]:
        now = time.time()
        self._stock.update({k: int(v) for k, v in levels.items()})
        rows = [{"sku": k, "units": int(v), "updated": now} for k, v in levels.items()]

        def write(conn: sqlite3.Connection) -> int:
            sqlite_utils.Database(conn)["stock"].upsert_all(rows, pk="sku")  # type: ignore[union-attr]
            return len(rows)

        return self.submit(write)

    def adjust_stock(self, sku: str, delta: int) -> None:
        """A pick (-n) or put-back (+n) seen by the shelf; never below zero."""
        row = self._stock_row(sku, delta)
        if row is not None:
            self._fire(lambda c: c.execute(_STOCK_SQL, row))

    def _stock_row(self, sku: str, delta: int) -> tuple[int, float, str] | None:
        """Apply ``delta`` to the in-memory stock now (never below zero); the ``_STOCK_SQL`` parameters for
        the writer, or None for a sku the store does not stock."""
        units = self._stock.get(sku)
        if units is None:
            return None
        units = max(0, units + delta)
        self._stock[sku] = units
        return (units, time.time(), sku)

    # -- promotions (the store's plan: display / mailer, by store-local day) ------------------------
    def set_promotions(self, entries: Iterable[tuple[str, bool, bool, date, date]]) -> Future[int]:
        """Replace the whole plan (a promotions snapshot): the rows go in one transaction (one op of the writer);
        the in-memory plan, and so ``promotion_plan``, changes at once."""
        rows = tuple((str(sku), bool(d), bool(m), start, end) for sku, d, m, start, end in entries)
        self._promotions = rows

        def write(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM promotions")
            conn.executemany('INSERT INTO promotions (sku, display, mailer, start, "end") VALUES (?, ?, ?, ?, ?)',
                             [(sku, int(d), int(m), a.isoformat(), b.isoformat()) for sku, d, m, a, b in rows])
            return len(rows)

        return self.submit(write)

    def promotions(self) -> tuple[tuple[str, bool, bool, date, date], ...]:
        """Every entry of the plan: (sku, display, mailer, start, end), dates inclusive."""
        return self._promotions

    def promotion_plan(self, day: date) -> Mapping[str, str] | None:
        """The entries active on ``day`` (store-local) as sku -> "display" / "mailer" / "both", or None when none
        is. The same object until the plan or the day changes: the ranker converts a plan once per object
        (``RecRequest.promotions``), so a request pays a tuple compare here, no SQL. Read-only (shared)."""
        key, plan = self._plan
        rows = self._promotions
        if key[0] is rows and key[1] == day:
            return plan
        out: dict[str, str] = {}
        for sku, d, m, start, end in rows:
            if start <= day <= end:
                was = out.get(sku)
                d = d or was in ("display", "both")
                m = m or was in ("mailer", "both")
                out[sku] = "both" if d and m else "display" if d else "mailer"
        plan = MappingProxyType(out) if out else None
        self._plan = ((rows, day), plan)  # one assignment: a reader on another thread sees the old or the new pair
        return plan

    def promotions_active(self, day: date) -> int:
        """How many entries of the plan are active on ``day`` (store-local)."""
        return sum(1 for _, _, _, start, end in self._promotions if start <= day <= end)

    # -- profiles --------------------------------------------------------------
    def profile(self, customer: str) -> Profile | None:
        return self._profiles.get(customer)

    def profile_count(self) -> int:
        return len(self._profiles)

    def upsert_profiles(self, profiles: Iterable[Profile]) -> Future[int]:
        rows = []
        for p in profiles:
            self._profiles[p.customer] = p
            rows.append({
                "customer": p.customer,
                "demographics": json.dumps(p.demographics),
                "history": json.dumps([list(h) for h in p.history]),
                "visits": p.visits,
                "updated": p.updated or time.time(),
            })

        def write(conn: sqlite3.Connection) -> int:
            sqlite_utils.Database(conn)["profiles"].upsert_all(rows, pk="customer")  # type: ignore[union-attr]
            return len(rows)

        return self.submit(write)

    def delete_profiles(self, customers: Iterable[str]) -> Future[int]:
        """Erase shoppers (salted hashes) from the node: their profile, and their hash on stored visits. Returns
        how many profiles were deleted."""
        keys = [c for c in dict.fromkeys(customers)]
        for c in keys:
            self._profiles.pop(c, None)

        def write(conn: sqlite3.Connection) -> int:
            n = 0
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                marks = ",".join("?" * len(part))
                n += conn.execute(f"DELETE FROM profiles WHERE customer IN ({marks})", part).rowcount
                conn.execute(f"UPDATE sessions SET customer = NULL WHERE customer IN ({marks})", part)
            return n

        return self.submit(write)

    # -- sessions --------------------------------------------------------------
    def save_session(self, session_id: str, *, started: float, ended: float | None, zone: str | None,
                     customer: str | None, items: Sequence[str]) -> None:
        row = {"id": session_id, "started": started, "ended": ended, "zone": zone, "customer": customer,
               "items": json.dumps(list(items))}
        self._fire(lambda c: sqlite_utils.Database(c)["sessions"].upsert(row, pk="id"))  # type: ignore[union-attr]

    # -- events + outbox ---------------------------------------------------------
    def append_event(self, event: _Event, *, session: str | None = None, upstream: str | None = None,
                     priority: int = 1, stock: tuple[str, int] | None = None) -> Future[None]:
        """Append an event (and, with ``upstream`` topic, queue it in the outbox) in one transaction.

        The future resolves once both rows are committed: only then is the event
        "accepted" in the sense of the reliability promise. ``stock=(sku, delta)``
        applies ``adjust_stock`` in the same op (a pick is one queue item, one
        writer hand-over, not two).
        """
        return self.submit(self._event_op(event, session, upstream, priority, stock))

    def record_event(self, event: _Event, *, session: str | None = None, upstream: str | None = None,
                     priority: int = 1, stock: tuple[str, int] | None = None) -> None:
        """``append_event`` for callers that never wait for the commit (the hot path): no ``Future`` (a
        Condition and a lock per event, kept alive until the batch commits, i.e. garbage-collector work),
        and no closure either: one plain tuple on the writer's queue, which writes runs of them with a few
        multi-row statements (fewer GIL hand-overs between the writer and the event loop)."""
        self._q.put(self._event_row(event, session, upstream, priority, stock))

    def _event_row(self, event: _Event, session: str | None, upstream: str | None, priority: int,
                   stock: tuple[str, int] | None) -> _EventRow:
        eid = getattr(event, "id", None) or _event_key(event)
        t = getattr(event, "t", None)
        now = self._wall()
        sess: str | None = session if session is not None else getattr(event, "session", None)
        # the event itself, not its JSON: events are frozen, so the writer thread serialises it (~4 µs a
        # shopper event off the event loop)
        return (eid, event.TYPE, now if t is None else float(t), sess, event, upstream, now, priority,
                self._stock_row(*stock) if stock is not None else None)

    def _event_op(self, event: _Event, session: str | None, upstream: str | None, priority: int,
                  stock: tuple[str, int] | None) -> Callable[[sqlite3.Connection], None]:
        row = self._event_row(event, session, upstream, priority, stock)
        return lambda conn: _write_rows(conn, (row,))

    def enqueue(self, topic: str, payload: str, *, id: str, priority: int = 1) -> Future[None]:
        now = self._wall()
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO outbox (id, topic, payload, created, priority) VALUES (?,?,?,?,?)",
                         (id, topic, payload, now, priority))

        return self.submit(write)

    def outbox_pending(self) -> int:
        return int(self.read().execute("SELECT count(*) FROM outbox").fetchone()[0])

    def outbox_peek(self, limit: int = 100, after_seq: int = 0) -> list[dict[str, Any]]:
        return self.query("SELECT seq, id, topic, payload, created, priority, attempts FROM outbox "
                          "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))

    def outbox_ack(self, seqs: Sequence[int]) -> Future[int]:
        ids = list(seqs)

        def write(conn: sqlite3.Connection) -> int:
            n = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                cur = conn.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
                n += cur.rowcount
            return n

        return self.submit(write)

    def event_count(self) -> int:
        return int(self.read().execute("SELECT count(*) FROM events").fetchone()[0])

    # -- impressions / models ------------------------------------------------------
    def record_impression(self, id: str, screen: str, session: str | None, skus: Sequence[str],
                          model_version: str, t: float) -> None:
        row = (id, screen, session, json.dumps(list(skus)), model_version, t)
        self._fire(lambda c: c.execute("INSERT OR IGNORE INTO impressions VALUES (?,?,?,?,?,?)", row))

    def register_model(self, version: str, path: str, sha256: str, status: str, *, active: bool,
                       detail: str = "") -> Future[None]:
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            if active:
                conn.execute("UPDATE models SET active=0")
            conn.execute(
                "INSERT INTO models (version, path, sha256, installed, status, active, detail) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(version) DO UPDATE SET path=excluded.path, "
                "sha256=excluded.sha256, status=excluded.status, active=excluded.active, detail=excluded.detail",
                (version, path, sha256, now, status, int(active), detail),
            )

        return self.submit(write)

    def meta_get(self, key: str, default: str | None = None) -> str | None:
        row = self.read().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES (?,?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

        return self.submit(write)

    # -- housekeeping --------------------------------------------------------------
    def _maintenance(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Retention by age and a row cap on events; the outbox is the sync room's to bound."""
        self._last_maintenance = time.monotonic()
        cutoff = self._wall() - self.retention_s
        # a stamp before BUILD_FLOOR came from an unset clock, not from long ago: only the row cap removes it
        aged = conn.execute("DELETE FROM events WHERE t < ? AND t >= ?", (cutoff, BUILD_FLOOR)).rowcount
        n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        capped = 0
        if n > self.max_events:
            capped = conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY t LIMIT ?)",
                (n - self.max_events,),
            ).rowcount
        conn.execute("DELETE FROM impressions WHERE t < ? AND t >= ?", (cutoff, BUILD_FLOOR))
        # a finished visit (its customer hash and picks: personal data, docs/privacy.md) lives no longer than the
        # events it came from; before, the sessions table was never pruned
        when = "coalesce(ended, started)"
        sessions = conn.execute(f"DELETE FROM sessions WHERE {when} < ? AND {when} >= ?",
                                (cutoff, BUILD_FLOOR)).rowcount
        # and neither table outgrows the event cap, whatever the clock said when the rows were written
        for table, order in (("sessions", when), ("impressions", "t")):
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if n > self.max_events:
                conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY {order} "
                             "LIMIT ?)", (n - self.max_events,))
        return {"aged_out": aged, "capped": capped, "sessions_aged_out": sessions}

    def run_maintenance(self) -> dict[str, int]:
        return self.submit(self._maintenance).result(30)

    def health(self) -> dict[str, Any]:
        h = dict(self._health)
        h.update(self._counters)
        h["path"] = str(self.path)
        h["queue"] = self._q.qsize()
        h["held"] = len(self._held)
        h["products"] = len(self._products)
        h["profiles"] = len(self._profiles)
        # entries active on the store-local day the recommend path last asked about (``promotion_plan``), else on
        # this machine's local date
        (_, day), _ = self._plan
        h["promotions_active"] = self.promotions_active(day or date.today())
        try:
            h["size_bytes"] = self.path.stat().st_size + (
                Path(str(self.path) + "-wal").stat().st_size if Path(str(self.path) + "-wal").exists() else 0)
        except OSError:
            h["size_bytes"] = None
        return h


# An event row for the writer: (id, type, t, session, the event (JSON made by the writer), outbox topic or
# None, created, priority, _STOCK_SQL parameters or None).
_EventRow = tuple[str, str, float, str | None, _Event, str | None, float, int, tuple[int, float, str] | None]
_STOCK_SQL = "UPDATE stock SET units=?, updated=? WHERE sku=?"
_EVENTS_SQL = "INSERT OR IGNORE INTO events (id, type, t, session, payload) VALUES "
_OUTBOX_SQL = "INSERT OR IGNORE INTO outbox (id, topic, payload, created, priority) VALUES "
_CHUNKS = (64, 16, 4, 1)  # multi-row statement sizes: a few distinct statements for the statement cache
_SQL_CACHE: dict[tuple[str, int], str] = {}


def _in_savepoint(conn: sqlite3.Connection, fn: Callable[..., Any], *args: Any) -> tuple[Any, Exception | None]:
    """``fn(conn, *args)`` inside the open transaction in a savepoint: (its result, None), or (None, the
    error) with only ``fn``'s writes undone."""
    conn.execute("SAVEPOINT op")
    try:
        res = fn(conn, *args)
        conn.execute("RELEASE op")
        return res, None
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return None, exc


def corrupt_copies(db: Path) -> list[Path]:
    """The corrupt copies of ``db`` set aside beside it (``<name>.corrupt-<time>``; their -wal and -shm go with
    them, not listed), oldest first."""
    try:
        return sorted(p for p in db.parent.glob(f"{db.name}.corrupt-*") if not p.name.endswith(("-wal", "-shm")))
    except OSError:
        return []


def space_fix(data_dir: Path | str) -> str:
    """How to free space in the node's data dir: one wording for the store's errors and ``doctor``. What is safe to
    delete and what is not: ``shelfcast.db.v<N>.bak`` is the copy a rollback restores (install.sh --rollback,
    the technician guide's downgrade), not a leftover."""
    d = Path(data_dir)
    return (f"safe to delete: the journal's old entries (`sudo journalctl --vacuum-size=32M`), the package cache "
            f"(`sudo apt-get clean`) and corrupt copies set aside (`sudo rm -f {d}/shelfcast.db.corrupt-*`); keep "
            f"{d}/shelfcast.db with its -wal and -shm (the cache and the events not sent yet) and "
            f"{d}/shelfcast.db.v<N>.bak (what going back to the previous version restores; delete it only if this "
            "node will not be rolled back)")


def is_disk_error(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _DISK_ERRORS


def _raise_disk_error(exc: Exception) -> None:
    """Re-raise an error of the disk (full, I/O): the batch fails whole and is held, not half-committed."""
    if is_disk_error(exc):
        raise exc


def _insert_many(conn: sqlite3.Connection, head: str, width: int, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` in as few multi-row INSERTs as ``_CHUNKS`` allow (one GIL release per statement, not per
    row), in order."""
    i, n = 0, len(rows)
    for size in _CHUNKS:
        while n - i >= size:
            sql = _SQL_CACHE.get((head, size))
            if sql is None:
                one = "(" + ",".join("?" * width) + ")"
                sql = _SQL_CACHE[(head, size)] = head + ",".join([one] * size)
            params: list[Any] = []
            for r in rows[i:i + size]:
                params += r
            conn.execute(sql, params)
            i += size


def _write_rows(conn: sqlite3.Connection, rows: Sequence[_EventRow]) -> None:
    """Event rows: events, their outbox rows (same order: the outbox ``seq`` follows the queue) and the
    stock updates (the last per sku: each carries the absolute level)."""
    payloads = [r[4].to_json() for r in rows]
    _insert_many(conn, _EVENTS_SQL, 5, [(r[0], r[1], r[2], r[3], j) for r, j in zip(rows, payloads, strict=True)])
    out = [(r[0], r[5], j, r[6], r[7]) for r, j in zip(rows, payloads, strict=True) if r[5] is not None]
    if out:
        _insert_many(conn, _OUTBOX_SQL, 5, out)
    stock = {r[8][2]: r[8] for r in rows if r[8] is not None}
    if stock:
        conn.executemany(_STOCK_SQL, stock.values())


def _event_key(event: _Event) -> str:
    import hashlib

    return hashlib.sha256(event.to_json().encode()).hexdigest()[:32]


def _product_from_row(r: dict[str, Any]) -> Product:
    return Product(
        sku=str(r["sku"]), name=str(r.get("name") or r["sku"]), department=r.get("department") or "",
        category=r.get("category") or "", product_type=r.get("product_type") or "", brand=r.get("brand") or "",
        price=None if r.get("price") is None else float(r["price"]), package_size=r.get("package_size") or "",
        unit_weight_g=None if r.get("unit_weight_g") is None else float(r["unit_weight_g"]),
        sales_heat=float(r.get("sales_heat") or 0.0),
    )


def _profile_from_row(r: dict[str, Any]) -> Profile:
    hist = tuple((str(s), float(t), float(q)) for s, t, q in json.loads(r.get("history") or "[]"))
    return Profile(customer=r["customer"], demographics=json.loads(r.get("demographics") or "{}"),
                   history=hist, visits=int(r.get("visits") or 0), updated=float(r.get("updated") or 0))
