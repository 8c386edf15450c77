"""Simulated shelf controllers behind real pseudo-terminals.

``SimulatedStore`` opens one pty per controller (``os.openpty``) and runs all
of them in one background thread, speaking protocol v1 byte for byte: HELLO,
SAMPLES at the configured rate from the ``physics`` model (noise, drift,
knocks, hands), HEARTBEAT, ACKs with seq de-duplication, shelf displays and a
bootloader with A/B images, resumable staging and fallback.

Each controller has a stable by-id style symlink (``store.port(cid)``), like
``/dev/serial/by-id/...``: unplugging removes it and closes the pty; replugging
opens a fresh pty behind the same name, as a real USB re-enumeration does.

Library use::

    with SimulatedStore() as sim:
        sim.add_controller("shelf-a", slot_count=8, unit_g=[...])
        port = sim.port("shelf-a")           # give this to the driver
        sim.pick("shelf-a", 3, units=2)      # ground truth returned
        sim.unplug("shelf-a"); sim.replug("shelf-a")
        sim.display("shelf-a", 3)            # what that slot's display shows

Command line: ``python -m firmware_bridge.sim --controllers 2`` prints the ports
and runs until Ctrl-C (random shopper activity with ``--picks-per-hour``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import random
import select
import shutil
import signal
import struct
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from firmware_bridge import protocol as P
from firmware_bridge.image import FirmwareImage, ImageError, parse_header
from firmware_bridge.physics import NoiseModel, ShelfPhysics, Truth

__all__ = ["ControllerSim", "DisplayState", "SimulatedStore", "main"]

log = logging.getLogger("shelfcast.sim")

NOBOOT_MARKER = b"NOBOOT"  # an image whose payload starts with this never confirms its boot


@dataclass(frozen=True, slots=True)
class DisplayState:
    name: str
    price_cents: int | None
    promo: str
    t: float


@dataclass
class _Image:
    hardware_id: str
    version: tuple[int, int, int]
    sha256: bytes


@dataclass
class Faults:
    drop_rate: float = 0.0  # outgoing frames silently lost
    corrupt_rate: float = 0.0  # outgoing frames with one byte flipped
    rx_corrupt_rate: float = 0.0  # incoming chunks with one byte flipped (flaky line, both ways)
    silent_until: float = 0.0  # a hung controller: no frames at all until then
    unplug_after_chunks: int | None = None  # cable pull during flashing, after N data chunks
    replug_after_s: float = 0.5


class ControllerSim:
    """One controller's firmware: app mode and bootloader. Driven by ``SimulatedStore``."""

    def __init__(self, controller_id: str, slot_count: int = 8, unit_g: list[float] | None = None,
                 stock: list[int] | None = None, hardware_id: str = "SC-LC8-r2",
                 firmware: tuple[int, int, int] = (1, 4, 2), rate_hz: int = 20,
                 noise: NoiseModel | None = None, seed: int | None = None, protocol_version: int = 1,
                 has_display: bool = True) -> None:
        self.controller_id = controller_id
        self.hardware_id = hardware_id
        self.slot_count = slot_count
        self.rate_hz = rate_hz
        self.protocol_version = protocol_version
        self.has_display = has_display
        self.rng = np.random.default_rng(seed)
        self._rand = random.Random(seed)
        unit_g = unit_g or [float(x) for x in self.rng.uniform(60, 900, slot_count)]
        stock = stock or [12] * slot_count
        self.physics = ShelfPhysics(slot_count, list(unit_g), list(stock), self.rng, noise or NoiseModel())
        self.tare_g = [0.0] * slot_count
        self.scale = [1.0] * slot_count
        self.active = _Image(hardware_id, firmware, hashlib.sha256(b"factory").digest())
        self.previous: _Image | None = None
        self.mode = P.MODE_APP
        self.boot_reason = P.BOOT_POWER_ON
        self.faults = Faults()
        self.displays: dict[int, DisplayState] = {}
        self.display_log: list[tuple[int, DisplayState]] = []
        self.commands: list[P.Message] = []  # every command executed (not re-sent duplicates)
        self.frames_sent = 0
        self.tx_overflows = 0
        self.flash_chunks = 0
        self._stage_header: FirmwareImage | None = None
        self._stage = bytearray()
        self._stage_ready = False
        self._seq = 0
        self._last_cmd: tuple[int, int] | None = None
        self._last_ack = b""
        self._decoder = P.FrameDecoder()
        self._boot_t = 0.0
        self._next_sample = 0.0
        self._next_hb = 0.0
        self._pending: list[tuple[float, Callable[[], None]]] = []
        self.write: Callable[[bytes], None] = lambda b: None
        self.now: Callable[[], float] = time.monotonic
        self.store: SimulatedStore | None = None

    # -- outgoing ------------------------------------------------------------------------------
    @property
    def firmware(self) -> tuple[int, int, int]:
        return self.active.version

    def _send(self, msg: P.Message) -> None:
        self._seq = (self._seq + 1) & 0xFF
        self._send_raw(P.encode_frame(msg.TYPE, self._seq, msg.pack(), self.protocol_version))

    def _send_raw(self, frame: bytes) -> None:
        f = self.faults
        if self.now() < f.silent_until:
            return
        if f.drop_rate and self._rand.random() < f.drop_rate:
            return
        if f.corrupt_rate and self._rand.random() < f.corrupt_rate:
            b = bytearray(frame)
            i = self._rand.randrange(len(b))
            b[i] ^= 1 << self._rand.randrange(8)
            frame = bytes(b)
        self.frames_sent += 1
        self.write(frame)

    def hello(self) -> P.Hello:
        caps = (P.CAP_DISPLAY if self.has_display else 0) | P.CAP_BOOTLOADER
        return P.Hello(self.controller_id, self.hardware_id, self.active.version, self.slot_count,
                       self.rate_hz, self.mode, self.boot_reason, caps, int((self.now() - self._boot_t) * 1000))

    def boot(self, reason: int, mode: int = P.MODE_APP) -> None:
        now = self.now()
        self.mode = mode
        self.boot_reason = reason
        self._boot_t = now
        self._seq = 0
        self._last_cmd = None
        self._decoder = P.FrameDecoder()
        self._next_sample = now + 1.0 / self.rate_hz
        self._next_hb = now + 1.0
        self._pending.clear()
        self.displays.clear()  # display RAM is lost on reboot; the node re-sends on HELLO
        self.write(b"\x00")  # flush whatever half frame the node may hold
        self._send(self.hello())

    # -- periodic ------------------------------------------------------------------------------
    def tick(self, now: float, t_phys: float) -> float:
        """Emit what is due; return when to be called next."""
        for item in [p for p in self._pending if p[0] <= now]:
            self._pending.remove(item)
            item[1]()
        if self.mode == P.MODE_APP:
            period = 1.0 / self.rate_hz
            if now >= self._next_sample:
                g = self.physics.render(np.array([t_phys]))[0]
                mg = tuple(round((g[i] - self.tare_g[i]) * self.scale[i] * 1000.0)
                           for i in range(self.slot_count))
                self._send(P.Samples(int((now - self._boot_t) * 1000), 0, mg))
                self._next_sample += period
                if self._next_sample < now:  # fell behind (stopped thread, slow machine): skip
                    self._next_sample = now + period
        if now >= self._next_hb:
            self._send(P.Heartbeat(int((now - self._boot_t) * 1000), 0, self.tx_overflows))
            self._next_hb = now + 1.0
        nxt = self._next_hb
        if self.mode == P.MODE_APP:
            nxt = min(nxt, self._next_sample)
        for t, _ in self._pending:
            nxt = min(nxt, t)
        return nxt

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self._pending.append((self.now() + delay, fn))

    # -- incoming ------------------------------------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        f = self.faults
        if f.rx_corrupt_rate and data and self._rand.random() < f.rx_corrupt_rate:
            b = bytearray(data)
            b[self._rand.randrange(len(b))] ^= 0x10
            data = bytes(b)
        if self.now() < f.silent_until:
            return
        for fr in self._decoder.feed(data):
            if fr.version != P.PROTOCOL_VERSION:
                continue
            try:
                msg = P.decode_message(fr)
            except P.ProtocolError:
                self._ack(fr.seq, P.Status.BAD_ARG)
                continue
            if isinstance(msg, P.HelloRequest):  # idempotent; starts a session: forget the last command
                self._last_cmd = None
                self._handle(fr.seq, msg)
                continue
            key = (fr.type, fr.seq)
            if key == self._last_cmd and self._last_ack:
                self._send_raw(self._last_ack)  # a retry of what we already did: same answer, no re-run
                continue
            self._last_cmd = key
            self._handle(fr.seq, msg)

    def _ack(self, seq: int, status: int = P.Status.OK, data: bytes = b"") -> None:
        self._seq = (self._seq + 1) & 0xFF
        frame = P.encode_frame(P.Ack.TYPE, self._seq, P.Ack(seq, status, data).pack(), self.protocol_version)
        self._last_ack = frame
        self._send_raw(frame)

    def _handle(self, seq: int, msg: P.Message) -> None:
        self.commands.append(msg)
        if isinstance(msg, P.HelloRequest):
            self._ack(seq)
            self._send(self.hello())
        elif isinstance(msg, P.Reboot):
            self._ack(seq)
            self.later(0.05, lambda: self.boot(P.BOOT_COMMANDED, msg.mode))
        elif self.mode == P.MODE_BOOTLOADER:
            self._handle_bootloader(seq, msg)
        elif isinstance(msg, P.Tare):
            slots = range(self.slot_count) if msg.slot == P.ALL_SLOTS else [msg.slot]
            if any(s >= self.slot_count for s in slots):
                return self._ack(seq, P.Status.BAD_ARG)
            now = self._reading()
            for s in slots:
                self.tare_g[s] = float(now[s])
            self._ack(seq)
        elif isinstance(msg, P.Calibrate):
            if msg.slot >= self.slot_count or msg.known_mg <= 0:
                return self._ack(seq, P.Status.BAD_ARG)
            raw = float(self._reading()[msg.slot]) - self.tare_g[msg.slot]
            if raw <= 0.001:
                return self._ack(seq, P.Status.FAIL)
            self.scale[msg.slot] = msg.known_mg / 1000.0 / raw
            self._ack(seq)
        elif isinstance(msg, P.SetRate):
            if not 1 <= msg.hz <= 200:
                return self._ack(seq, P.Status.BAD_ARG)
            self.rate_hz = msg.hz
            self._ack(seq)
        elif isinstance(msg, P.Show):
            if not self.has_display:
                return self._ack(seq, P.Status.UNSUPPORTED)
            if msg.slot >= self.slot_count:
                return self._ack(seq, P.Status.BAD_ARG)
            if msg.clear:
                self.displays.pop(msg.slot, None)
            else:
                st = DisplayState(msg.name, msg.price_cents, msg.promo, time.time())
                self.displays[msg.slot] = st
                self.display_log.append((msg.slot, st))
            self._ack(seq)
        elif isinstance(msg, P.FlashBegin | P.FlashData | P.FlashEnd | P.FlashBoot):
            self._ack(seq, P.Status.WRONG_MODE)
        else:
            self._ack(seq, P.Status.UNSUPPORTED)
        return None

    def _reading(self) -> np.ndarray:
        """A settled reading (average of a few samples), as the firmware does for tare/calibrate."""
        t = self.store.t_phys() if self.store else 0.0
        return self.physics.render(np.full(8, t)).mean(axis=0)

    # -- bootloader ----------------------------------------------------------------------------
    def _handle_bootloader(self, seq: int, msg: P.Message) -> None:
        if isinstance(msg, P.FlashBegin):
            try:
                hdr0 = parse_header(msg.header)
            except ImageError:
                return self._ack(seq, P.Status.BAD_IMAGE)
            if hdr0.hardware_id != self.hardware_id:
                return self._ack(seq, P.Status.BAD_IMAGE)
            if self._stage_header is None or self._stage_header.sha256 != hdr0.sha256:
                self._stage_header = hdr0
                self._stage = bytearray()
            self._stage_ready = False
            self._ack(seq, P.Status.OK, struct.pack("<I", len(self._stage)))
        elif isinstance(msg, P.FlashData):
            hdr = self._stage_header
            if hdr is None:
                return self._ack(seq, P.Status.WRONG_MODE)
            have = len(self._stage)
            if msg.offset == have and have + len(msg.data) <= hdr.size:
                self._stage += msg.data
                self.flash_chunks += 1
            elif msg.offset > have or msg.offset + len(msg.data) > hdr.size:
                return self._ack(seq, P.Status.OFFSET, struct.pack("<I", have))
            self._ack(seq, P.Status.OK, struct.pack("<I", len(self._stage)))
            f = self.faults
            if f.unplug_after_chunks is not None and self.flash_chunks >= f.unplug_after_chunks and self.store:
                f.unplug_after_chunks = None
                store, cid, delay = self.store, self.controller_id, f.replug_after_s
                self.later(0.0, lambda: store._unplug_now(cid, replug_after=delay))
        elif isinstance(msg, P.FlashEnd):
            hdr = self._stage_header
            if hdr is None or len(self._stage) != hdr.size:
                return self._ack(seq, P.Status.FAIL, struct.pack("<I", len(self._stage)))
            digest = hashlib.sha256(self._stage).digest()
            if digest != hdr.sha256:
                self._stage_header = None
                self._stage = bytearray()
                return self._ack(seq, P.Status.BAD_IMAGE, digest)
            self._stage_ready = True
            self._ack(seq, P.Status.OK, digest)
        elif isinstance(msg, P.FlashBoot):
            hdr = self._stage_header
            if hdr is None or not self._stage_ready:
                return self._ack(seq, P.Status.FAIL)
            self._ack(seq)
            boots = bytes(self._stage[:len(NOBOOT_MARKER)]) != NOBOOT_MARKER
            new = _Image(hdr.hardware_id, hdr.version, hdr.sha256)
            self._stage_header, self._stage, self._stage_ready = None, bytearray(), False

            def reboot() -> None:
                if boots:
                    self.previous, self.active = self.active, new
                    self.boot(P.BOOT_NEW_IMAGE)
                else:  # the new image never confirmed: the bootloader restores the previous one
                    self.boot(P.BOOT_FALLBACK)

            self.later(0.3, reboot)
        else:
            self._ack(seq, P.Status.WRONG_MODE)
        return None


@dataclass
class _Port:
    master: int = -1
    slave: int = -1
    plugged: bool = False
    link: Path | None = None
    replug_at: float | None = None
    tx_buf: bytearray = field(default_factory=bytearray)


class SimulatedStore:
    """N simulated controllers, each behind its own pty, served by one thread."""

    TX_BUF_MAX = 64 * 1024  # what a controller buffers when nobody reads (then it drops)

    def __init__(self, directory: str | os.PathLike[str] | None = None, seed: int = 0) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="shelfcast-sim-")) if directory is None else Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.controllers: dict[str, ControllerSim] = {}
        self.truths: dict[str, list[Truth]] = {}
        self.sent_log: list[tuple[str, int, float]] = []
        self.trace: Callable[[str, bytes, int], None] | None = None  # (cid, frame, write perf_counter_ns)
        self._ports: dict[str, _Port] = {}
        self._lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._running = False
        self._t0 = time.monotonic()
        self.seed = seed
        self.random_picks_per_hour = 0.0
        self._rng = random.Random(seed)

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> SimulatedStore:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="shelf-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            for cid in list(self._ports):
                self._close_port(cid)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def t_phys(self) -> float:
        return time.monotonic() - self._t0

    # -- controllers ---------------------------------------------------------------------------
    def add_controller(self, controller_id: str, **kw: object) -> ControllerSim:
        kw.setdefault("seed", self._rng.randrange(2**31))
        c = ControllerSim(controller_id, **kw)  # type: ignore[arg-type]
        c.store = self
        with self._lock:
            self.controllers[controller_id] = c
            self.truths[controller_id] = []
            self._ports[controller_id] = _Port()
            self._open_port(controller_id)
            c.write = self._writer(controller_id)
            c.boot(P.BOOT_POWER_ON)
        self._wake()
        return c

    def _writer(self, cid: str) -> Callable[[bytes], None]:
        return lambda b: self._write(cid, b)

    def port(self, controller_id: str) -> str:
        """The stable by-id path to open (a symlink to the current pty)."""
        return str(self.dir / f"usb-ShelfCast_Shelf_Controller_{controller_id}-if00")

    def pty_path(self, controller_id: str) -> str | None:
        p = self._ports[controller_id]
        return os.ttyname(p.slave) if p.plugged else None

    def _open_port(self, cid: str) -> None:
        p = self._ports[cid]
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        p.master, p.slave, p.plugged, p.replug_at = master, slave, True, None
        p.tx_buf.clear()
        link = Path(self.port(cid))
        tmp = link.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(link)
        p.link = link

    def _close_port(self, cid: str) -> None:
        p = self._ports[cid]
        if p.link is not None:
            with contextlib.suppress(FileNotFoundError):
                p.link.unlink()
        for fd in (p.master, p.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        p.master = p.slave = -1
        p.plugged = False

    def _write(self, cid: str, frame: bytes) -> None:
        p = self._ports.get(cid)
        if p is None or not p.plugged:
            return
        if self.trace is not None:
            self.trace(cid, frame, time.perf_counter_ns())
        if p.tx_buf:
            if len(p.tx_buf) + len(frame) > self.TX_BUF_MAX:
                self.controllers[cid].tx_overflows += 1
                return
            p.tx_buf += frame
            return
        try:
            n = os.write(p.master, frame)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        if n < len(frame):
            p.tx_buf += frame[n:]

    # -- scripting (thread-safe) ---------------------------------------------------------------
    def pick(self, controller_id: str, slot: int, units: int = 1, dur: float | None = None,
             delay: float = 0.0) -> Truth:
        return self._interact(controller_id, slot, -abs(units), dur, delay)

    def put(self, controller_id: str, slot: int, units: int = 1, dur: float | None = None,
            delay: float = 0.0) -> Truth:
        return self._interact(controller_id, slot, abs(units), dur, delay)

    def _interact(self, cid: str, slot: int, delta: int, dur: float | None, delay: float) -> Truth:
        with self._lock:
            c = self.controllers[cid]
            tr = c.physics.interact(self.t_phys() + delay, slot, delta, dur)
            self.truths[cid].append(tr)
            return tr

    def place(self, controller_id: str, slot: int, grams: float) -> None:
        """Put a calibration weight on (or take it off with a negative value): no ground truth event."""
        with self._lock:
            self.controllers[controller_id].physics.base[slot] += grams

    def knock(self, controller_id: str, amp_g: float | None = None) -> None:
        with self._lock:
            self.controllers[controller_id].physics.knock(self.t_phys(), amp_g)

    def inject_garbage(self, controller_id: str, data: bytes | int = 64) -> None:
        if isinstance(data, int):
            data = bytes(self._rng.randrange(256) for _ in range(data))
        with self._lock:
            self._write(controller_id, data)

    def faults(self, controller_id: str) -> Faults:
        """The controller's fault switches (drop_rate, corrupt_rate, …); set attributes on it."""
        return self.controllers[controller_id].faults

    def silence(self, controller_id: str, seconds: float) -> None:
        with self._lock:
            self.controllers[controller_id].faults.silent_until = time.monotonic() + seconds

    def brownout(self, controller_id: str, off_s: float = 0.3) -> None:
        """Supply dips: the controller resets (samples stop) and boots again with reason brown-out."""
        with self._lock:
            c = self.controllers[controller_id]
            c.faults.silent_until = time.monotonic() + off_s
            c.later(off_s, lambda: c.boot(P.BOOT_BROWN_OUT))
        self._wake()

    def unplug(self, controller_id: str) -> None:
        with self._lock:
            self._unplug_now(controller_id)

    def _unplug_now(self, cid: str, replug_after: float | None = None) -> None:
        self._close_port(cid)
        if replug_after is not None:
            self._ports[cid].replug_at = time.monotonic() + replug_after
        self._wake()

    def replug(self, controller_id: str) -> None:
        with self._lock:
            self._replug_now(controller_id)
        self._wake()

    def _replug_now(self, cid: str) -> None:
        self._open_port(cid)
        c = self.controllers[cid]
        c.boot(P.BOOT_POWER_ON)  # USB-powered: a replug is a power-on (flash staging survives)

    def display(self, controller_id: str, slot: int) -> DisplayState | None:
        with self._lock:
            return self.controllers[controller_id].displays.get(slot)

    def set_random_activity(self, picks_per_hour: float) -> None:
        self.random_picks_per_hour = picks_per_hour

    # -- the thread ----------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        next_random = time.monotonic()
        while self._running:
            now = time.monotonic()
            due = now + 0.5
            rfds = [self._wake_r]
            wfds = []
            with self._lock:
                tp = self.t_phys()
                for cid, c in self.controllers.items():
                    p = self._ports[cid]
                    if not p.plugged:
                        if p.replug_at is not None:
                            if now >= p.replug_at:
                                self._replug_now(cid)
                            else:
                                due = min(due, p.replug_at)
                        continue
                    try:
                        due = min(due, c.tick(now, tp))
                    except Exception:  # a simulator bug must not kill every controller
                        log.exception("controller %s tick failed", cid)
                    if p.plugged:
                        rfds.append(p.master)
                        if p.tx_buf:
                            wfds.append(p.master)
                    c.physics.prune(tp - 5.0)
                if self.random_picks_per_hour and now >= next_random:
                    self._random_activity()
                    next_random = now + self._rng.expovariate(
                        self.random_picks_per_hour / 3600.0 * max(1, len(self.controllers)))
            timeout = max(0.0, due - time.monotonic())
            try:
                r, w, _ = select.select(rfds, wfds, [], timeout)
            except (OSError, ValueError):
                continue  # an fd closed under us (unplug): go round again
            with self._lock:
                if self._wake_r in r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                for cid, p in self._ports.items():
                    if not p.plugged:
                        continue
                    if p.master in w and p.tx_buf:
                        try:
                            n = os.write(p.master, p.tx_buf)
                            del p.tx_buf[:n]
                        except (BlockingIOError, OSError):
                            pass
                    if p.master in r:
                        try:
                            data = os.read(p.master, 4096)
                        except BlockingIOError:
                            continue
                        except OSError as exc:
                            if exc.errno == errno.EIO:  # no slave open: nobody listens
                                continue
                            raise
                        if data:
                            self.controllers[cid].on_bytes(data)

    def _random_activity(self) -> None:
        if not self.controllers:
            return
        cid = self._rng.choice(sorted(self.controllers))
        c = self.controllers[cid]
        slot = self._rng.randrange(c.slot_count)
        if c.physics.units[slot] <= 1:
            self._interact(cid, slot, 8, None, 0.0)  # restock
        else:
            self._interact(cid, slot, -self._rng.choice((1, 1, 1, 2)), None, 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware_bridge.sim",
                                 description="Simulated shelf controllers on pseudo-terminals")
    ap.add_argument("--controllers", type=int, default=1)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--prefix", default="shelf-")
    ap.add_argument("--picks-per-hour", type=float, default=120.0, help="random shopper picks (0: none)")
    ap.add_argument("--dir", default=None, help="where to put the by-id symlinks (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # a plain flag, not threading.Event: Event.set() in a signal handler can deadlock when the signal lands
    # while the main thread holds the Event's lock inside Event.wait()
    stop = [False]

    def on_term(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    with SimulatedStore(args.dir, seed=args.seed) as sim:
        for i in range(args.controllers):
            cid = f"{args.prefix}{i + 1}"
            sim.add_controller(cid, slot_count=args.slots)
            print(f"{cid}\t{sim.port(cid)}\t{sim.pty_path(cid)}", flush=True)
        sim.set_random_activity(args.picks_per_hour)
        seen: dict[tuple[str, int], DisplayState] = {}
        try:
            while not stop[0]:
                time.sleep(0.5)
                for cid in sim.controllers:
                    for slot in range(sim.controllers[cid].slot_count):
                        st = sim.display(cid, slot)
                        if st is not None and seen.get((cid, slot)) != st:
                            seen[(cid, slot)] = st
                            price = "" if st.price_cents is None else f" ${st.price_cents / 100:.2f}"
                            log.info("display %s/%d: %s%s %s", cid, slot, st.name, price, st.promo)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
