"""Serial transport: find controllers, keep a port open, feed frames to the event loop.

One ``SerialLink`` per port. A small supervisor thread opens the port with
pyserial (exclusive lock, so the node and ``shelfcast firmware flash`` never
share a port; opening and the backoff sleeps are the only waits, and they
happen off the loop). Once open, the descriptor (non-blocking) is handed to
the asyncio loop with ``add_reader``: each readiness does one ``os.read`` of
up to 4 KiB, decodes the frames (COBS + CRC, see ``protocol``) and calls
``on_frames`` with ``(arrival_wall, arrival_ns, Frame)`` tuples. No thread
hand-over on the hot path (that cost a second wake-up and a GIL switch per
read: p99 several ms under load). Writes are non-blocking; a partial write
waits for ``add_writer``.

A pulled cable, a missing device or a permission problem never ends the
link: it reports the state (with the fix) and reopens with exponential
backoff up to ``reconnect_max_s``. Buffers are bounded: the decoder keeps at
most one frame, unsent bytes are capped (``TX_MAX``; a command that does
not fit is refused and counted in ``queue_drops``), and while the loop is
busy the bytes wait in the kernel's tty buffer, whose overflow the controller
counts (HEARTBEAT ``tx_overflows``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial
from serial.tools import list_ports

from firmware_bridge.protocol import Frame, FrameDecoder

__all__ = ["BY_ID_DIR", "DIALOUT_FIX", "FoundPort", "LinkStats", "SerialLink", "discover", "open_error_message"]

log = logging.getLogger("shelfcast.shelves")

BY_ID_DIR = "/dev/serial/by-id"
DIALOUT_FIX = "add the service user to the dialout group: `sudo usermod -aG dialout shelfcast` (then restart)"
TX_MAX = 64 * 1024
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
    if code in (errno.ENOTTY, errno.EISDIR) or "Inappropriate ioctl" in text or "Is a directory" in text:
        return "error", (f"{port}: not a serial port; set shelves.ports to the controller's device (list them "
                         f"with `ls {BY_ID_DIR}/`) or to auto")
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
    """One port. Callbacks (``on_frames``, ``on_state``) run on the asyncio loop."""

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
        self._fd = -1  # attached to the loop (loop thread only)
        self._tx = bytearray()
        self._writer = False
        self._gone = threading.Event()  # the loop detached the fd: the thread closes and reopens
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()

    # -- control -------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"serial:{os.path.basename(self.port)}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """From any thread but the loop's (the room calls it via ``asyncio.to_thread``)."""
        self._running = False
        self._stop_evt.set()
        try:
            self.loop.call_soon_threadsafe(self._detach, "stopped", "")
        except RuntimeError:
            self._gone.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def send(self, data: bytes) -> bool:
        """On the loop: write now (non-blocking) or queue; False when the port is not open."""
        if self._fd < 0 or self.state != "open":
            return False
        if not self._tx:
            try:
                n = os.write(self._fd, data)
                self.stats.bytes_out += n
                if n == len(data):
                    return True
                data = data[n:]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.stats.write_errors += 1
                self._detach("lost", f"{self.port}: link lost ({exc.strerror or exc}); reconnecting")
                return False
        if len(self._tx) + len(data) > TX_MAX:
            self.stats.queue_drops += 1  # the controller is not reading: drop, the caller's retry decides
            return False
        self._tx += data
        if not self._writer:
            self.loop.add_writer(self._fd, self._on_writable)
            self._writer = True
        return True

    # -- the loop side -------------------------------------------------------------------------
    def _set_state(self, state: str, msg: str = "") -> None:
        changed = (state, msg) != (self.state, self.error)
        self.state, self.error = state, msg
        if changed and self.on_state is not None:
            self.on_state(self, state, msg)

    def _attach(self, fd: int) -> None:
        if not self._running:
            self._gone.set()
            return
        self._fd = fd
        self._tx.clear()
        self.decoder.reset()
        self.loop.add_reader(fd, self._on_readable)
        self._set_state("open", "")

    def _detach(self, state: str, msg: str) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._fd)
            if self._writer:
                with contextlib.suppress(Exception):
                    self.loop.remove_writer(self._fd)
            self._writer = False
            self._fd = -1
            self._tx.clear()
            if state == "lost":
                log.warning("%s", msg)
            self._set_state(state, msg)
        elif state == "stopped":
            self._set_state(state, msg)
        self._gone.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._detach("lost", f"{self.port}: link lost ({exc.strerror or exc}); reconnecting")
            return
        if not data:
            self._detach("lost", f"{self.port}: link lost (device disconnected); reconnecting")
            return
        ns = time.perf_counter_ns()
        wall = time.time()
        self.stats.bytes_in += len(data)
        frames = self.decoder.feed(data)
        if frames:
            self.on_frames(self, [(wall, ns, f) for f in frames])

    def _on_writable(self) -> None:
        try:
            n = os.write(self._fd, self._tx)
            self.stats.bytes_out += n
            del self._tx[:n]
        except BlockingIOError:
            return
        except OSError as exc:
            self._detach("lost", f"{self.port}: link lost ({exc.strerror or exc}); reconnecting")
            return
        if not self._tx and self._writer:
            self.loop.remove_writer(self._fd)
            self._writer = False

    # -- the supervisor thread: open, hand over, wait, close, back off ------------------------
    def _call(self, fn: Callable[..., None], *args: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # loop closed: we are shutting down
            self._running = False
            return False

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
                self._call(self._set_state, state, msg)
                self._stop_evt.wait(backoff)
                backoff = min(self.reconnect_max_s, backoff * 2)
                continue
            self.stats.opens += 1
            if not first:
                self.stats.reconnects += 1
            first = False
            opened = time.monotonic()
            try:
                with contextlib.suppress(serial.SerialException, OSError):
                    ser.reset_input_buffer()
                fd = ser.fileno()
                os.set_blocking(fd, False)
                self._gone.clear()
                if self._call(self._attach, fd):
                    self._gone.wait()
            finally:
                with contextlib.suppress(Exception):
                    ser.close()
            if time.monotonic() - opened > 5.0:
                backoff = 0.05  # it worked for a while: reconnect quickly
            if self._running:
                self._stop_evt.wait(backoff)
                backoff = min(self.reconnect_max_s, backoff * 2)
