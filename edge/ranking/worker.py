"""Model ranking in a separate process, so the event loop and the ranker use two cores (issue #6).

Why: at 1,000 picks/s the event loop read, detected, fused, ranked and pushed every pick on one core;
ranking was ~40 % of that, and the picks of one controller round waited for each other's rankings.
With ``model.ranking_process`` on, a worker process owns the model ranker and everything it keeps per
visit (frequency caps, session state, the parsed history); the loop sends it one small message per due
visit and carries on reading and pushing while it ranks.

Loop side (``RankingProcess``, a room: the composition root starts it before the recommend room and
stops it after): a ``socketpair`` to a fresh interpreter (``python -m edge.ranking.worker``: spawned,
not forked, because the node has threads by then — the store writer, MQTT — and a fork can inherit a
lock one of them held). Replies are read with ``loop.add_reader`` on the socket (no thread hop). Frames
are a 4-byte length and a pickle. What the worker needs besides requests: the model (path and re-rank
settings, at start and at each hot swap: it loads the new release in a thread and serves the old one
until then), the catalogue and zone items (at start and swap), the stock levels (a snapshot at start,
then the levels that changed, carried by the next request), and per visit the picks added since its
last request and the shopper's history and demographics once (the worker drops them when the visit
ends).

Faults: the worker exits, crashes or does not answer a request within ``hang_s`` → logged once, killed
and reaped; the recommend room serves the requests it had in flight in-process (nothing is lost) and
uses the in-process ranker until a new worker is ready; restarts back off 0.5 s → 30 s. The worker
exits on its own when its socket closes (the node stopped or died): no orphan.

Worker side: ``serve(fd)``, single-threaded: read a request, rank it (``RankerScorer.score_with``, the
same code the in-process path runs), reply, next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["RankingProcess", "VisitSent", "process_memory_mb", "serve"]

log = logging.getLogger("shelfcast.ranking")

_LEN = struct.Struct("<I")
_UNSENT: Any = object()  # a visit's profile was never sent to this worker
SNDBUF = 1 << 20  # the loop never blocks on a send unless the worker is stuck


def _frame(obj: Any) -> bytes:
    b = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(b)) + b


def _frames(buf: bytearray) -> list[Any]:
    """Complete frames at the head of ``buf`` (removed from it), decoded."""
    out = []
    pos, n = 0, len(buf)
    while n - pos >= 4:
        size = _LEN.unpack_from(buf, pos)[0]
        if n - pos - 4 < size:
            break
        out.append(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + size]))
        pos += 4 + size
    if pos:
        del buf[:pos]
    return out


def model_source(model: Any) -> tuple[str, dict[str, Any]] | None:
    """(model file, re-rank settings) of a ``RankerScorer`` (or a wrapper of one, e.g. sync's probation
    guard); None for anything the worker cannot load (a test's fake scorer, no model)."""
    ranker = getattr(model, "ranker", None) if model is not None else None
    path = getattr(ranker, "path", None)
    rerank = getattr(ranker, "rerank", None)
    if path is None or rerank is None or not dataclasses.is_dataclass(rerank):
        return None
    return str(path), dataclasses.asdict(rerank)  # type: ignore[arg-type]


@dataclasses.dataclass
class VisitSent:
    """What the current worker holds of one visit (loop side): reset when a new worker starts."""

    picks: int = 0  # entries of ``VisitState.picked`` sent so far
    customer: str | None = None
    profile: Any = _UNSENT  # the store's Profile object last sent (identity: re-sent when the store's changes)
    not_shown: list[str] = dataclasses.field(default_factory=list)  # to take back from its caps on the next request


class RankingProcess:
    """The ranking worker process and its link (loop side). A room: ``start``/``stop``/``health``."""

    name = "ranking"

    def __init__(self, config: Any, store: Any, model: Any, *, hang_s: float = 2.0,
                 start_timeout_s: float = 60.0, backoff_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self.config = config
        self.store = store
        self.hang_s = hang_s
        self.start_timeout_s = start_timeout_s
        self.backoff_s = backoff_s
        self.on_reply: Callable[[tuple[Any, ...]], None] = lambda msg: None  # "ok" / "err" replies
        self.on_batch: Callable[[], None] = lambda: None  # after the replies of one read were handled
        self.on_down: Callable[[list[int]], None] = lambda rids: None  # requests lost with the worker
        self.ready = False
        self.version: str | None = None
        self.pid: int | None = None
        self.stats = {"requests": 0, "errors": 0, "restarts": 0, "crashes": 0, "hangs": 0, "swaps": 0}
        self.visits: dict[str, VisitSent] = {}
        self._model = model
        self._source = model_source(model)
        self._spawned: tuple[str, dict[str, Any]] | None = None  # what the current worker was told to load
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._inflight: dict[int, float] = {}  # request id -> perf_counter when sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_fut: asyncio.Future[None] | None = None
        self._stock_sent: dict[str, int | None] = {}
        self._stock_dirty: set[str] = set()
        self._failures = 0
        self._up_since = 0.0
        self._stopping = False
        self._restart: asyncio.TimerHandle | None = None
        self._spawning: asyncio.Task[None] | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._reaping: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        if self._source is not None:
            await self._spawn()  # waits until it is ready (a node starts ranking out of process)

    async def stop(self) -> None:
        self._stopping = True
        for h in (self._restart, self._watch):
            if h is not None:
                h.cancel()
        if self._spawning is not None and not self._spawning.done():
            self._spawning.cancel()
            with contextlib.suppress(BaseException):
                await self._spawning
        proc = self._proc
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(_frame(("stop",)))
        self._close()
        if proc is not None:
            await asyncio.to_thread(_reap, proc, 3.0)
        for t in list(self._reaping):
            with contextlib.suppress(BaseException):
                await t
        self._proc = None

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.ready or self._source is None else "degraded", "ready": self.ready,
                "pid": self.pid, "model": self.version, "in_flight": len(self._inflight), **self.stats}

    def serves(self, model: Any) -> bool:
        """The worker ranks for ``model`` now (else: rank in-process)."""
        return self.ready and model is not None and model is self._model

    # -- what the recommend room calls ----------------------------------------------------------------------
    def stock_changed(self, sku: str) -> None:
        self._stock_dirty.add(sku)

    def scan_stock(self) -> None:
        """Levels changed outside the hot path (restocks from sync, tools): a pass over the catalogue."""
        stock, sent, dirty = self.store.stock, self._stock_sent, self._stock_dirty
        for sku, units in sent.items():
            if stock(sku) != units:
                dirty.add(sku)

    def take_stock(self) -> list[tuple[str, int | None]]:
        if not self._stock_dirty:
            return []
        stock = self.store.stock
        out = [(s, stock(s)) for s in self._stock_dirty]
        self._stock_dirty.clear()
        self._stock_sent.update(out)
        return out

    def send(self, msg: tuple[Any, ...]) -> bool:
        """Send a request (``("rank", rid, ...)``); False if there is no worker to take it."""
        sock = self._sock
        if sock is None or not self.ready:
            return False
        try:
            sock.sendall(_frame(msg))
        except OSError as exc:
            self._down(f"sending to it failed ({exc})", crash=True)
            return False
        if msg[0] == "rank":
            self._inflight[msg[1]] = time.perf_counter()
            self.stats["requests"] += 1
            self._arm_watch()
        return True

    def call(self, msg: tuple[Any, ...], timeout: float | None = None) -> tuple[Any, ...] | None:
        """Send ``msg`` and wait (blocking the loop) for its reply; replies to other requests that arrive
        first are handled as usual. None: the worker is gone or did not answer (the caller ranks in-process)."""
        rid = msg[1]
        if not self.send(msg):
            return None
        deadline = time.monotonic() + (self.hang_s if timeout is None else timeout)
        found: list[tuple[Any, ...]] = []
        while not found:
            sock = self._sock
            left = deadline - time.monotonic()
            if sock is None:
                return None
            if left <= 0:
                self.stats["hangs"] += 1
                self._down(f"no answer within {self.hang_s:.1f} s", crash=True)
                return None
            r, _, _ = select.select([sock], [], [], left)
            if r:
                self._read(want=rid, found=found)
        return found[0]

    def drop(self, session: str) -> None:
        """The visit ended: the worker forgets its picks and profile (the ranker's caches age out)."""
        if self.visits.pop(session, None) is not None and self._sock is not None and self.ready:
            with contextlib.suppress(OSError):
                self._sock.sendall(_frame(("drop", session)))

    def swap(self, model: Any) -> None:
        """The recommend room got a new model (sync's hot swap, a rollback, a bench turning the model off)."""
        self._model = model
        src = model_source(model)
        if src == self._source:
            return
        self._source = src
        if src is None:
            return  # not loadable there: the room ranks in-process while ``serves`` is False
        if self._sock is not None and self.ready:
            self.stats["swaps"] += 1
            self._spawned = src
            try:
                self._sock.sendall(_frame(("swap", src[0], src[1], self._products())))
            except OSError as exc:
                self._down(f"sending to it failed ({exc})", crash=True)
        elif self._loop is not None and not self._stopping and self._proc is None and self._restart is None:
            self._schedule(0.0)

    # -- memory / CPU of the worker, for benchmarks and health --------------------------------------------
    def cpu_s(self) -> float | None:
        if self.pid is None:
            return None
        try:
            f = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def memory_mb(self) -> dict[str, float]:
        """rss / pss / uss (MB) of the worker from ``smaps_rollup`` (empty without a worker)."""
        return process_memory_mb(self.pid) if self.pid is not None else {}

    # -- internals --------------------------------------------------------------------------------------------
    def _products(self) -> list[dict[str, Any]]:
        return [{"sku": p.sku, "name": p.name, "department": p.department, "category": p.category,
                 "product_type": p.product_type, "brand": p.brand, "price": p.price}
                for p in self.store.products().values()]

    async def _spawn(self) -> None:
        src = self._source
        if src is None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            proc = subprocess.Popen([sys.executable, "-m", "edge.ranking.worker", "--fd", str(b.fileno())],
                                    pass_fds=[b.fileno()], stdin=subprocess.DEVNULL)
        except Exception as exc:  # never stops the node: rank in-process, try again later
            a.close()
            b.close()
            self._failures += 1
            delay = min(self.backoff_s[1], self.backoff_s[0] * (2 ** self._failures))
            log.warning("could not start the ranking process (%s: %s); ranking in-process, retrying in %.1f s",
                        type(exc).__name__, exc, delay)
            self._schedule(delay)
            return
        b.close()
        self._spawned = src
        self._proc, self._sock, self.pid = proc, a, proc.pid
        self._buf.clear()
        self.visits.clear()
        stock = self.store.stock
        products = self._products()
        self._stock_sent = {p["sku"]: stock(p["sku"]) for p in products}
        self._stock_dirty.clear()
        init = {"model_path": src[0], "rerank": src[1], "timezone": self.config.node.timezone,
                "store_id": self.config.node.store_id, "zone_items": _zone_items(self.config),
                "products": products, "stock": dict(self._stock_sent)}
        self._ready_fut = loop.create_future()
        try:
            await asyncio.to_thread(a.sendall, _frame(("init", init)))
            a.settimeout(0.5)  # a send blocks at most this long (a full buffer: the worker is stuck)
            loop.add_reader(a.fileno(), self._read)
            await asyncio.wait_for(asyncio.shield(self._ready_fut), self.start_timeout_s)
        except (TimeoutError, OSError) as exc:
            self._down(f"it did not start ({type(exc).__name__}: {exc})", crash=True)
        except asyncio.CancelledError:
            self._close()
            raise

    def _schedule(self, delay: float) -> None:
        loop = self._loop
        if loop is None or self._stopping:
            return

        def go() -> None:
            self._restart = None
            self.stats["restarts"] += 1
            self._spawning = loop.create_task(self._spawn(), name="ranking-process-start")

        self._restart = loop.call_later(delay, go)

    def _read(self, want: int | None = None, found: list[tuple[Any, ...]] | None = None) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError as exc:
            self._down(f"reading from it failed ({exc})", crash=True)
            return
        if not data:
            self._down("it exited", crash=True)
            return
        self._buf += data
        replies = 0
        for msg in _frames(self._buf):
            kind = msg[0]
            if kind == "ok" or kind == "err":
                if self._inflight.pop(msg[1], None) is None:
                    continue
                if kind == "err":
                    self.stats["errors"] += 1
                if found is not None and msg[1] == want:
                    found.append(msg)
                    continue
                replies += 1
                try:
                    self.on_reply(msg)
                except Exception:
                    log.exception("handling a ranking reply failed")
            elif kind == "ready":
                self.version = msg[1]
                self.ready = True
                src = self._source
                if src is not None and src != self._spawned:  # swapped while it was starting
                    self.stats["swaps"] += 1
                    self._spawned = src
                    with contextlib.suppress(OSError):
                        sock.sendall(_frame(("swap", src[0], src[1], self._products())))
                self._up_since = time.monotonic()
                log.info("ranking process %s ready (model %s, start %.2f s)", self.pid, msg[1], msg[2])
                if self._ready_fut is not None and not self._ready_fut.done():
                    self._ready_fut.set_result(None)
            elif kind == "swapped":
                self.version = msg[1]
                log.info("ranking process now serves model %s (loaded in %.2f s)", msg[1], msg[2])
            elif kind == "swap_failed":
                log.warning("ranking process could not load the new model (%s); it keeps serving %s; the "
                            "node ranks in-process", msg[1], self.version)
                self._source = None  # ``serves`` stays False for this model: in-process ranking
        if replies:
            try:
                self.on_batch()
            except Exception:
                log.exception("after-reply work failed")

    def _arm_watch(self) -> None:
        if self._watch is None and self._loop is not None:
            self._watch = self._loop.call_later(self.hang_s / 4, self._check)

    def _check(self) -> None:
        self._watch = None
        if not self._inflight:
            return
        oldest = min(self._inflight.values())
        if time.perf_counter() - oldest > self.hang_s:
            self.stats["hangs"] += 1
            self._down(f"no answer within {self.hang_s:.1f} s", crash=True)
            return
        self._arm_watch()

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        self.ready = False
        if sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()

    def _down(self, why: str, crash: bool) -> None:
        """The worker is gone or useless: kill and reap it, hand back what it had, restart with backoff."""
        if self._sock is None and self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._close()
        if self._ready_fut is not None and not self._ready_fut.done():
            self._ready_fut.set_result(None)
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            if self._loop is not None:
                t = self._loop.create_task(asyncio.to_thread(_reap, proc, 5.0))
                self._reaping.add(t)
                t.add_done_callback(self._reaping.discard)
            code = proc.poll()
        else:
            code = None
        lost = list(self._inflight)
        self._inflight.clear()
        self.visits.clear()
        self.pid = None
        if self._stopping:
            return
        if crash:
            self.stats["crashes"] += 1
        if self._up_since and time.monotonic() - self._up_since > 60.0:
            self._failures = 0  # it had served a while: start the backoff over
        self._up_since = 0.0
        delay = min(self.backoff_s[1], self.backoff_s[0] * (2 ** self._failures))
        self._failures += 1
        log.warning("ranking process %s: %s (exit code %s); ranking in-process, %d request(s) handed back; "
                    "restarting it in %.1f s", proc.pid if proc else "?", why, code, len(lost), delay)
        try:
            self.on_down(lost)
        finally:
            self._schedule(delay)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_memory_mb(pid: int | str) -> dict[str, float]:
    """rss / pss / uss (MB) of process ``pid`` (or "self") from ``/proc/<pid>/smaps_rollup``; {} if unreadable."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    kb: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kb[parts[0].rstrip(":")] = int(parts[1])
    out["rss_mb"] = round(kb.get("Rss", 0) / 1024, 1)
    out["pss_mb"] = round(kb.get("Pss", 0) / 1024, 1)
    out["uss_mb"] = round((kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024, 1)
    return out


def _zone_items(config: Any) -> dict[str, list[str]]:
    from edge.ranking.adapter import zone_items

    return zone_items(config)


# -- the worker process -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Visit:
    """A visit as the adapter reads it (``session``, ``zone``, ``picked``), plus the shopper's profile."""

    session: str
    zone: str | None = None
    picked: list[str] = dataclasses.field(default_factory=list)
    history: Sequence[tuple[str, Any, float]] = ()
    profile: Mapping[str, Any] | None = None


class _Catalogue:
    """The store as the worker's ``RankerScorer`` sees it: products and stock levels, no profiles (those come
    per visit)."""

    def __init__(self, products: list[dict[str, Any]], stock: dict[str, int | None]) -> None:
        self._products = {p["sku"]: p for p in products}
        self.levels = stock

    def products(self) -> dict[str, dict[str, Any]]:
        return self._products

    def stock(self, sku: str) -> int | None:
        return self.levels.get(sku)

    def profile(self, customer: str) -> None:
        return None


def _load(init: Mapping[str, Any], path: str, rerank: Mapping[str, Any],
          products: list[dict[str, Any]], levels: dict[str, int | None]) -> Any:
    from edge.ranking.adapter import RankerScorer
    from edge.ranking.ranker import Ranker, RerankConfig

    ranker = Ranker.load(path, timezone=init["timezone"], rerank=RerankConfig(**rerank))
    return RankerScorer(ranker, store=_Catalogue(products, levels), store_id=init["store_id"],
                        zone_items=init["zone_items"])


def serve(fd: int) -> int:
    """The worker: rank requests from the socket ``fd`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node's Ctrl-C stops the node, which stops this
    sock = socket.socket(fileno=fd)
    buf = bytearray()
    pending: list[Any] = []

    def recv() -> Any:
        while not pending:
            data = sock.recv(1 << 16)
            if not data:
                return None
            buf.extend(data)
            pending.extend(_frames(buf))
        return pending.pop(0)

    def send(obj: Any) -> None:
        sock.sendall(_frame(obj))

    msg = recv()
    if msg is None or msg[0] != "init":
        return 2
    init = msg[1]
    t0 = time.perf_counter()
    levels: dict[str, int | None] = dict(init["stock"])
    scorer = _load(init, init["model_path"], init["rerank"], init["products"], levels)
    tz = ZoneInfo(init["timezone"])
    fromtimestamp = datetime.fromtimestamp
    perf = time.perf_counter
    send(("ready", scorer.version, round(perf() - t0, 3)))
    gc.collect()
    gc.freeze()  # the model's tables live as long as the process: keep full collections off them
    visits: dict[str, _Visit] = {}
    loaded: list[tuple[Any, float] | str] = []  # a hot swap's new scorer (or error), from its loader thread

    def load_new(path: str, rerank: dict[str, Any], products: list[dict[str, Any]]) -> None:
        t = perf()
        try:
            loaded.append((_load(init, path, rerank, products, levels), perf() - t))
        except Exception as exc:
            loaded.append(f"{type(exc).__name__}: {exc}")

    while True:
        msg = recv()
        if msg is None or msg[0] == "stop":
            return 0
        if loaded:
            got = loaded.pop()
            if isinstance(got, str):
                send(("swap_failed", got))
            else:
                scorer = got[0]
                send(("swapped", scorer.version, round(got[1], 3)))
        kind = msg[0]
        if kind == "rank":
            (_, rid, session, zone, prof, picks, now, k, exclude, second_stage, t_due, skip_after, stock,
             not_shown, reset) = msg
            if stock:
                levels.update(stock)
            v = visits.get(session)
            if v is None:
                v = visits[session] = _Visit(session)
            v.zone = zone
            if picks:
                v.picked.extend(picks)
            if prof is not None:
                v.history, v.profile = prof
            try:
                if not_shown:
                    scorer.not_shown(session, not_shown)
                if reset:
                    scorer.reset_caps(session)
                skipped = False
                # the overload guard, decided when the request is taken (perf_counter is CLOCK_MONOTONIC,
                # the same clock in both processes)
                if second_stage and t_due and skip_after > 0 and perf() - t_due > skip_after:
                    second_stage, skipped = False, True
                out = scorer.score_with(v, fromtimestamp(now, tz), k, exclude, second_stage, v.history, v.profile)
            except Exception as exc:
                send(("err", rid, f"{type(exc).__name__}: {exc}"))
                continue
            send(("ok", rid, scorer.version, out, skipped))
        elif kind == "drop":
            visits.pop(msg[1], None)
        elif kind == "swap":
            threading.Thread(target=load_new, args=(msg[1], msg[2], msg[3]), name="model-load", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edge.ranking.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--fd", type=int, required=True, help="the socket to the node (inherited)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ranking-process %(levelname)s %(message)s")
    try:
        return serve(args.fd)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the node went away


if __name__ == "__main__":
    sys.exit(main())
