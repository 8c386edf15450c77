"""``shelfcast bench sync``: events through the outbox, a broker outage, and a real ingest.

A real Mosquitto (started here, persistence on) and ``shelfcast cloud ingest``
in its own process; the node side (store + sync room) runs in this process so
``/proc/self/io`` ``write_bytes`` is the node's own storage traffic (SD wear).
Timeline: send at ``events_per_s`` for ``before_s``; SIGKILL the broker;
keep sending for ``outage_s``; restart it; keep sending for ``after_s``; wait
for the outbox to drain; stop the ingest with SIGTERM and compare the ids it
wrote to Parquet with the ids the store accepted.

The broker and the ingest are stopped on every way out (an error, the ingest
dying or not subscribing in time, Ctrl-C, SIGTERM: the event loop's own signal
handlers cancel the run, and ``run_bench`` raises ``KeyboardInterrupt``). SIGTERM
works even when SIGINT is ignored, as in a job a non-interactive shell starts
with ``&`` (a SIGINT the process inherited as ignored stays ignored). Waits that
run in threads are bounded to about a second each, so an interrupted run never
waits on a thread for long when the event loop closes.
``pyarrow`` (the ingest's Parquet) is checked before anything starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from edge.procstats import io_write_bytes

__all__ = ["BrokerProcess", "run_bench"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """A Mosquitto we own (persistence on, autosave every second)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed: sudo apt-get install -y mosquitto")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {data}/", "autosave_interval 1", "max_queued_messages 1000000",
                 "max_inflight_messages 0", f"log_dest file {self.workdir / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"mosquitto did not start listening on 127.0.0.1:{self.port} within 5 s; "
                           f"see {self.workdir / 'mosquitto.log'}")

    def wait_saved(self, since: float, timeout: float = 5.0) -> bool:
        """Wait until the broker has written its database (``autosave_interval 1``) after ``since`` (epoch s)."""
        db = self.workdir / "data" / "mosquitto.db"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if db.stat().st_mtime > since:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def _ordered_id() -> str:
    """32 hex chars like uuid4().hex, but time-first: B-tree inserts land on the last page (SD wear)."""
    import uuid

    return f"{time.time_ns() // 1000:016x}{uuid.uuid4().hex[:16]}"


class IngestProcess:
    """``shelfcast cloud ingest`` in its own process. A thread reads its stderr the whole time (the pipe
    never fills, a silent ingest cannot block the bench) and keeps the last lines for error messages."""

    def __init__(self, url: str, out: Path, client_id: str = "bench-ingest") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "cloud", "ingest", "--broker", url, "--out",
                                      str(out), "--client-id", client_id], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.subscribed = threading.Event()
        self.tail: deque[str] = deque(maxlen=20)
        self._reader = threading.Thread(target=self._read, name="bench-ingest-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.strip()
            if line:
                self.tail.append(line)
            if "subscribed" in line:  # "ingest: subscribed to … on …"
                self.subscribed.set()

    def wait_subscribed(self, timeout: float) -> None:
        """Return once the ingest's subscription is in place; RuntimeError with its own words otherwise."""
        deadline = time.monotonic() + timeout
        while not self.subscribed.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(2)
                said = self.tail[-1] if self.tail else "nothing on stderr"
                raise RuntimeError(f"shelfcast cloud ingest exited (code {self.proc.returncode}) before it "
                                   f"subscribed: {said}")
            if time.monotonic() >= deadline:
                said = f"; its last words: {self.tail[-1]}" if self.tail else ""
                raise RuntimeError(f"shelfcast cloud ingest did not subscribe within {timeout:.0f} s{said}")

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM, then its one-line JSON summary (``{"error": …}`` if it gives none)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            assert self.proc.stdout is not None
            return dict(json.loads(self.proc.stdout.read().strip().splitlines()[-1]))
        except Exception as exc:
            self.kill()
            return {"error": f"ingest did not report: {exc!r}"}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(2)  # EOF once the process is gone; closing stderr under its feet would raise there
        for f in (self.proc.stdout, None if self._reader.is_alive() else self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except Exception:
                    pass


def _read_ids(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for f in sorted(out.glob("*.parquet")):
        try:
            ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        except Exception:
            pass
    return ids


def _wait_ingested(out: Path, want: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    ids: set[str] = set()
    while time.monotonic() < deadline:
        ids = _read_ids(out)
        if want <= ids:
            break
        time.sleep(0.5)
    return ids


def run_bench(*, events_per_s: float = 500.0, outage_s: float = 30.0, before_s: float = 5.0, after_s: float = 5.0,
              progress: TextIO | None = None, workdir: Path | None = None, ordered_ids: bool = False) -> dict[str, Any]:
    from edge.sync.ingest import require_pyarrow

    require_pyarrow()  # MissingDependency now, not "ingest did not subscribe" after the broker is up
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shelfcast-bench-sync-")
        workdir = Path(tmp.name)
    try:
        return asyncio.run(_run(events_per_s, outage_s, before_s, after_s, progress, workdir, ordered_ids))
    except asyncio.CancelledError:  # SIGINT / SIGTERM (``_on_signals``): cleaned up, say "interrupted"
        raise KeyboardInterrupt from None
    finally:
        if tmp is not None:
            tmp.cleanup()


def _on_signals() -> None:
    """Cancel the running task (the bench) on SIGTERM, and on SIGINT unless this process inherited it ignored.

    Through the loop (``add_signal_handler``), not a Python-level handler: the old CLI handler turned SIGTERM into
    ``raise_signal(SIGINT)`` for asyncio's own SIGINT handler, which asyncio installs only when SIGINT has Python's
    default handler; a bench started with SIGINT ignored (``shelfcast bench sync &`` in a script, a test runner
    started that way) then ignored SIGTERM too and ran to its end. A second signal does nothing more: the
    cleanup is bounded."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    fired = [False]

    def interrupt() -> None:
        if not fired[0]:
            fired[0] = True
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        loop.add_signal_handler(signal.SIGINT, interrupt)


async def _bounded(fn: Callable[..., Any], timeout: float, *args: Any) -> Any:
    """``fn(*args, step)`` in a thread, in steps of at most 1 s until it returns something truthy or ``timeout``
    passes: a cancelled run leaves no thread waiting for long (the loop's close waits for its threads)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(fn, *args, max(0.05, min(1.0, deadline - time.monotonic())))
        if got or time.monotonic() >= deadline:
            return got


def _say(progress: TextIO | None, msg: str) -> None:
    if progress is not None:
        print(f"bench sync: {msg}", file=progress, flush=True)


async def _run(rate: float, outage_s: float, before_s: float, after_s: float, progress: TextIO | None,
               workdir: Path, ordered_ids: bool = False) -> dict[str, Any]:
    from edge.bus import Bus
    from edge.config import NodeConfig
    from edge.events import ShopperEvent, new_id
    from edge.store import Store
    from edge.sync.room import SyncOptions, SyncRoom

    _on_signals()
    broker = BrokerProcess(workdir / "broker")
    ingest: IngestProcess | None = None
    store: Store | None = None
    room: SyncRoom | None = None
    try:
        broker.start()
        out = workdir / "ingest"
        ingest = IngestProcess(broker.url, out)
        cfg = NodeConfig.model_validate({"node": {"data_dir": str(workdir / "node"), "store_id": "bench",
                                                  "node_id": "node-1"},
                                         "mqtt": {"cloud": {"url": broker.url}}})
        store = Store(workdir / "node" / "shelfcast.db", flush_interval_ms=cfg.store.flush_interval_ms).open()
        opts = SyncOptions(backoff_max_s=2.0)
        node_room = SyncRoom(cfg, store, Bus(), options=opts)
        node_room.link.s.backoff_min_s = 0.2
        await node_room.start()
        room = node_room  # started: the cleanup stops it
        await _bounded(room.link.wait_connected, 10)
        await asyncio.to_thread(ingest.wait_subscribed, 20.0)  # returns at once when the cleanup kills the ingest
        # the SIGKILL must not land before the broker has saved the ingest's session (autosave every 1 s):
        # a broker restarted without it drops what the node sends until the ingest has subscribed again,
        # which with a short --before-s showed up as "lost" events that were the bench's doing (2 of 8 runs)
        await _bounded(broker.wait_saved, 5.0, time.time())
        accepted: list[str] = []
        failed = 0
        topic = room.topics.events
        written0 = io_write_bytes()
        t0 = time.monotonic()
        phases = (before_s, before_s + outage_s, before_s + outage_s + after_s)
        killed = restarted = False
        t_restart = 0.0
        backlog_at_restart = 0
        drained_at: float | None = None
        reconnected_at: float | None = None
        acked_at_reconnect = 0
        sent = 0
        pending_futs: list[tuple[str, Any]] = []
        _say(progress, f"sending {rate:.0f} events/s; broker outage of {outage_s:.0f} s after {before_s:.0f} s")
        while True:
            now = time.monotonic() - t0
            if now >= phases[2]:
                break
            if not killed and now >= phases[0]:
                broker.kill()
                killed = True
                _say(progress, "broker SIGKILLed")
            if killed and not restarted and now >= phases[1]:
                await asyncio.to_thread(store.flush)
                backlog_at_restart = store.outbox_pending()
                broker.start()
                restarted = True
                t_restart = time.monotonic()
                _say(progress, f"broker restarted; backlog {backlog_at_restart} events")
            due = int(now * rate) - sent
            for _ in range(max(0, due)):
                ev = ShopperEvent(session=f"s{sent % 50}", sku=f"sku-{sent % 300}", action="pick", zone="dairy",
                                  shelf="d1", slot=sent % 6, id=_ordered_id() if ordered_ids else new_id())
                pending_futs.append((ev.id, store.append_event(ev, upstream=topic)))
                sent += 1
            if restarted and drained_at is None and room.link.connected.is_set():
                if reconnected_at is None:
                    reconnected_at = time.monotonic()
                    acked_at_reconnect = room.drainer.stats["acked_events"]
                if room.drainer.stats["acked_events"] - acked_at_reconnect >= backlog_at_restart:
                    drained_at = time.monotonic()
            keep = []
            for eid, f in pending_futs:
                if f.done():
                    if f.exception() is None:
                        accepted.append(eid)
                    else:
                        failed += 1
                else:
                    keep.append((eid, f))
            pending_futs = keep
            await asyncio.sleep(0.01)
        for eid, f in pending_futs:
            try:
                await asyncio.wrap_future(f)
                accepted.append(eid)
            except Exception:
                failed += 1
        ok = await _bounded(room.drain, 120.0)
        t_end = time.monotonic()
        if drained_at is None:
            drained_at = t_end
        written1 = io_write_bytes()
        written = written1 - written0 if written0 is not None and written1 is not None else None
        _say(progress, f"outbox drained: {ok}")
        room = None  # stopped here, not again in the cleanup
        await node_room.stop()
        store.close()
        acc = set(accepted)
        await _bounded(lambda t: _wait_ingested(out, acc, t) >= acc, 60.0)
        summary = ingest.stop()
        broker.kill()
        received_ids = _read_ids(out)
        lost = len(acc - received_ids)
        start = reconnected_at if reconnected_at is not None else t_restart
        drain_s = max(1e-6, drained_at - start)
        drained_events = backlog_at_restart
        return {
            "events": len(acc),
            "outage_s": outage_s,
            "events_per_s": rate,
            "received": summary.get("received"),
            "received_unique": len(acc & received_ids),
            "lost": lost,
            "duplicates_delivered": (summary.get("received") or 0) - (summary.get("unique") or 0),
            "rejected_by_store": failed,
            "backlog_at_reconnect": backlog_at_restart,
            "reconnect_s": round(start - t_restart, 3),
            "drain_s": round(drain_s, 3),
            "drain_events_per_s": round(drained_events / drain_s, 1),
            "bytes_written": written,
            "bytes_written_per_1000_events": round(written / len(acc) * 1000) if acc and written is not None else None,
            "mqtt_bytes_per_1000_events": round(node_room.drainer.stats["bytes"]
                                                / max(1, node_room.drainer.stats["events"]) * 1000),
            "batches": node_room.drainer.stats["batches"],
            "resent_events": node_room.drainer.stats["resends"],
            "drained": ok,
            "ids": "time-ordered (bench)" if ordered_ids else "edge.events.new_id",
            "total_s": round(t_end - t0, 2),
        }
    finally:  # every way out (error, ingest gone, Ctrl-C = this task cancelled): nothing of ours keeps running
        try:
            if ingest is not None:
                ingest.kill()
            broker.kill()
            if room is not None:
                try:
                    await asyncio.wait_for(room.stop(), 15)
                except Exception:
                    pass
        finally:
            if store is not None:
                store.close()
