"""Serial transport: find controllers, keep a port open, hand frames to the event loop.

One ``SerialLink`` per port owns one thread. The thread opens the port with
pyserial (exclusive lock, so the node and ``shelfcast firmware flash`` never
share a port), reads with ``select`` + ``os.read`` on its descriptor, decodes
frames (COBS + CRC, see ``protocol``) and hands batches of
``(arrival_wall, arrival_ns, Frame)`` to the asyncio loop with
``call_soon_threadsafe`` — one wake-up per read, never a blocking call on the
loop. Writes are queued and written by the same thread.

A pulled cable, a missing device or a permission problem never ends the
thread: it reports the state (with the fix) and retries with exponential
backoff up to ``reconnect_max_s``. The hand-over queue is bounded
(``QUEUE_MAX``); if the loop falls that far behind, the oldest frames are
dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import serial
from serial.tools import list_ports

from firmware_bridge.protocol import Frame, FrameDecoder

__all__ = ["BY_ID_DIR", "DIALOUT_FIX", "FoundPort", "LinkStats", "SerialLink", "discover", "open_error_message"]

log = logging.getLogger("shelfcast.shelves")

BY_ID_DIR = "/dev/serial/by-id"
DIALOUT_FIX = "add the service user to the dialout group: `sudo usermod -aG dialout shelfcast` (then restart)"
QUEUE_MAX = 8192
READ_SIZE = 4096


@dataclass(frozen=True, slots=True)
class FoundPort:
    path: str  # the stable /dev/serial/by-id path when there is one
    device: str  # the kernel device (/dev/ttyACM0)
    usb_id: str | None  # "1209:5c5c"
    serial_number: str | None = None
    description: str = ""


def discover(usb_ids: list[str], by_id_dir: str = BY_ID_DIR) -> list[FoundPort]:
    """Serial ports whose USB VID:PID is in ``usb_ids``, named by their by-id link when possible."""
    wanted = {u.lower() for u in usb_ids}
    by_real: dict[str, str] = {}
    for link in sorted(glob.glob(os.path.join(by_id_dir, "*"))):
        with contextlib.suppress(OSError):
            by_real[os.path.realpath(link)] = link
    out: list[FoundPort] = []
    for info in list_ports.comports():
        if info.vid is None or info.pid is None:
            continue
        uid = f"{info.vid:04x}:{info.pid:04x}"
        if uid not in wanted:
            continue
        real = os.path.realpath(info.device)
        out.append(FoundPort(by_real.get(real, info.device), info.device, uid, info.serial_number,
                             info.description or ""))
    return out


def open_error_message(port: str, exc: BaseException) -> tuple[str, str]:
    """(state, message with the fix) for a failed open."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EACCES or isinstance(exc, PermissionError) or "Permission denied" in text:
        return "permission", f"{port}: permission denied; {DIALOUT_FIX}"
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        return "missing", f"{port}: not present; waiting for the controller to be plugged in"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in text.lower():
        return "busy", (f"{port}: in use by another program (the shelfcast service or a flashing tool); "
                        "stop it first")
    return "error", f"{port}: cannot open: {text}"


@dataclass(slots=True)
class LinkStats:
    reconnects: int = 0
    opens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    queue_drops: int = 0
    write_errors: int = 0


class SerialLink:
    """One port, one thread. Callbacks run on the asyncio loop."""

    def __init__(self, port: str, loop: asyncio.AbstractEventLoop,
                 on_frames: Callable[[SerialLink, list[tuple[float, int, Frame]]], None],
                 on_state: Callable[[SerialLink, str, str], None] | None = None,
                 baudrate: int = 115200, reconnect_max_s: float = 10.0) -> None:
        self.port = port
        self.baudrate = baudrate
        self.reconnect_max_s = reconnect_max_s
        self.loop = loop
        self.on_frames = on_frames
        self.on_state = on_state
        self.decoder = FrameDecoder()
        self.stats = LinkStats()
        self.state = "starting"
        self.error = ""
        self._q: deque[tuple[float, int, Frame]] = deque()
        self._qlock = threading.Lock()
        self._scheduled = False
        self._tx: deque[bytes] = deque(maxlen=256)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()

    # -- control (any thread) ------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"serial:{os.path.basename(self.port)}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._running = False
        self._stop_evt.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def send(self, data: bytes) -> bool:
        """Queue bytes for the wire; False when the port is not open (the caller retries or gives up)."""
        if self.state != "open":
            return False
        self._tx.append(data)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- the thread ----------------------------------------------------------------------------
    def _set_state(self, state: str, msg: str = "") -> None:
        changed = (state, msg) != (self.state, self.error)
        self.state, self.error = state, msg
        if changed and self.on_state is not None:
            self._call(self.on_state, self, state, msg)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: we are shutting down
            self._running = False

    def _run(self) -> None:
        backoff = 0.05
        first = True
        while self._running:
            try:
                ser = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                state, msg = open_error_message(self.port, exc)
                if state != self.state or msg != self.error:
                    (log.error if state == "permission" else log.warning)("%s", msg)
                self._set_state(state, msg)
                self._stop_evt.wait(backoff)
                backoff = min(self.reconnect_max_s, backoff * 2)
                continue
            self.stats.opens += 1
            if not first:
                self.stats.reconnects += 1
            first = False
            try:
                with contextlib.suppress(serial.SerialException, OSError):
                    ser.reset_input_buffer()
                self.decoder.reset()
                self._tx.clear()
                self._set_state("open", "")
                backoff = 0.05
                self._pump(ser.fileno())
            except OSError as exc:
                if self._running:
                    log.warning("%s: link lost (%s); reconnecting", self.port, exc.strerror or exc)
                    self._set_state("lost", f"{self.port}: link lost ({exc.strerror or exc}); reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    ser.close()
            if self._running:
                self._stop_evt.wait(backoff)
                backoff = min(self.reconnect_max_s, backoff * 2)
        self._set_state("stopped", "")

    def _pump(self, fd: int) -> None:
        os.set_blocking(fd, False)
        wake = self._wake_r
        pending = b""
        while self._running:
            wr = [fd] if pending or self._tx else []
            r, _w, _ = select.select([fd, wake], wr, [], 1.0)
            if wake in r:
                with contextlib.suppress(OSError):
                    os.read(wake, 4096)
            if fd in r:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    data = None
                if data is not None:
                    if not data:
                        raise OSError(errno.EIO, "device disconnected")
                    now_ns = time.perf_counter_ns()
                    wall = time.time()
                    self.stats.bytes_in += len(data)
                    frames = self.decoder.feed(data)
                    if frames:
                        self._deliver(wall, now_ns, frames)
            if self._tx or pending:
                while self._tx and len(pending) < 4096:
                    pending += self._tx.popleft()
                try:
                    n = os.write(fd, pending)
                    self.stats.bytes_out += n
                    pending = pending[n:]
                except BlockingIOError:
                    pass

    def _deliver(self, wall: float, ns: int, frames: list[Frame]) -> None:
        with self._qlock:
            q = self._q
            over = len(q) + len(frames) - QUEUE_MAX
            if over > 0:
                for _ in range(min(over, len(q))):
                    q.popleft()
                self.stats.queue_drops += over
            for f in frames:
                q.append((wall, ns, f))
            if self._scheduled:
                return
            self._scheduled = True
        self._call(self._drain)

    def _drain(self) -> None:  # on the loop
        with self._qlock:
            items = list(self._q)
            self._q.clear()
            self._scheduled = False
        if items:
            self.on_frames(self, items)
