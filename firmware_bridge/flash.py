"""Field flashing and querying over one serial port (synchronous: a technician's tool).

Flow (``docs/shelf-protocol.md`` §Flashing): verify the image file (header
CRC, size, SHA-256) and that its hardware id matches the controller's HELLO
*before a byte is written*; reboot the controller into its bootloader;
FLASH_BEGIN (the bootloader answers with how much of this very image it
already staged: resume); FLASH_DATA chunks, each in a CRC-checked frame,
acknowledged with the next offset and retried on silence or a bad frame;
FLASH_END (the bootloader hashes what it staged; we compare); FLASH_BOOT; then
the controller must say HELLO with the new version, or it reports that it
fell back to the previous image. A pulled cable at any point: wait for the
port to come back, reconnect, resume.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from firmware_bridge import protocol as P
from firmware_bridge.driver import open_error_message
from firmware_bridge.image import FirmwareImage

__all__ = ["FlashError", "FlashInterrupted", "FlashResult", "Flasher", "flash", "identify", "query",
           "send_command"]

Progress = Callable[[int, int], None]


class FlashError(RuntimeError):
    """Flashing failed; the message says what happened to the controller and what to do."""


class FlashInterrupted(FlashError):
    """The technician stopped the flash (Ctrl-C); the message says what state the controller is in."""


class Disconnected(OSError):
    pass


@dataclass(frozen=True, slots=True)
class FlashResult:
    controller_id: str
    hardware_id: str
    old_version: str
    new_version: str
    bytes_sent: int
    retries: int
    reconnects: int
    resumed_from: int
    seconds: float


class Flasher:
    """A command/response session with one controller on one port."""

    def __init__(self, port: str, timeout: float = 0.4, retries: int = 10, reconnect_timeout: float = 30.0,
                 baudrate: int = 115200) -> None:
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.reconnect_timeout = reconnect_timeout
        self.baudrate = baudrate
        self.ser: serial.Serial | None = None
        self.fd = -1
        self.decoder = P.FrameDecoder()
        self.inbox: list[P.Message] = []
        self.seq = 0
        self.retried = 0
        self.reconnects = 0

    # -- connection ----------------------------------------------------------------------------
    def open(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                self.ser = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=1, exclusive=True)
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                state, msg = open_error_message(self.port, exc)
                if state in ("permission", "busy", "error") or time.monotonic() >= deadline:
                    if state == "missing":  # the node waits for a replug; a field tool says where to look
                        msg = (f"{self.port}: not present; check the USB cable and the port name "
                               "(`ls -l /dev/shelfcast/ /dev/serial/by-id/`, `sudo shelfcast firmware list`)")
                    elif state == "busy":  # on a node, the node itself: say how to stop it
                        msg += ": `sudo systemctl stop shelfcast`, then run this again (`sudo systemctl start " \
                               "shelfcast` when done)"
                    raise FlashError(msg) from None
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        self.fd = self.ser.fileno()
        os.set_blocking(self.fd, False)
        with contextlib.suppress(Exception):
            self.ser.reset_input_buffer()
        self.decoder.reset()
        self.inbox.clear()

    def close(self) -> None:
        if self.ser is not None:
            with contextlib.suppress(Exception):
                self.ser.close()
        self.ser = None
        self.fd = -1

    def reconnect(self) -> None:
        self.close()
        self.reconnects += 1
        self.open(wait=self.reconnect_timeout)

    def __enter__(self) -> Flasher:
        if self.ser is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            deadline = time.monotonic() + 1.0
            while view:
                try:
                    n = os.write(self.fd, view)
                    view = view[n:]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Disconnected("write timed out") from None
                    select.select([], [self.fd], [], 0.05)
        except OSError as exc:
            raise Disconnected(str(exc)) from None

    def _poll(self, timeout: float) -> None:
        try:
            r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
            if not r:
                return
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:
            raise Disconnected(str(exc)) from None
        if not data:
            raise Disconnected("device disconnected")
        for fr in self.decoder.feed(data):
            if fr.version != P.PROTOCOL_VERSION:
                raise FlashError(f"controller on {self.port} speaks shelf protocol v{fr.version}; this tool "
                                 f"speaks v{P.PROTOCOL_VERSION}: update shelfcast")
            with contextlib.suppress(P.ProtocolError):
                msg = P.decode_message(fr)
                if not isinstance(msg, P.Samples | P.Heartbeat | P.Log):
                    self.inbox.append(msg)

    def request(self, msg: P.Message) -> P.Ack:
        """Send; wait for the ACK with our seq; resend the same seq on silence."""
        self.seq = self.seq % 255 + 1
        frame = msg.frame(self.seq)
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            self._write(frame)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                self._poll(deadline - time.monotonic())
                for i, m in enumerate(self.inbox):
                    if isinstance(m, P.Ack) and m.ack_seq == self.seq:
                        del self.inbox[i]
                        return m
        raise Disconnected(f"no answer to {type(msg).__name__} after {self.retries + 1} tries")

    def wait_hello(self, timeout: float, mode: int | None = None) -> P.Hello:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if isinstance(m, P.Hello) and (mode is None or m.mode == mode):
                    del self.inbox[i:]  # whatever came before a (re)boot is stale
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise Disconnected("no HELLO from the controller")
            self._poll(min(left, 0.1))

    def hello(self, timeout: float = 1.0) -> P.Hello:
        self.inbox.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request(P.HelloRequest())
                return self.wait_hello(max(0.2, deadline - time.monotonic()))
            except Disconnected:
                if time.monotonic() >= deadline:
                    raise

    def to_bootloader(self) -> P.Hello:
        h = self.hello()
        if h.mode == P.MODE_BOOTLOADER:
            return h
        if not h.capabilities & P.CAP_BOOTLOADER:
            raise FlashError(f"controller {h.controller_id} has no bootloader; it cannot be flashed over serial")
        self.inbox.clear()
        ack = self.request(P.Reboot(P.MODE_BOOTLOADER))
        if ack.status != P.Status.OK:
            raise FlashError(f"controller refused to enter its bootloader ({P.Status.NAMES.get(ack.status)})")
        return self.wait_hello(5.0, P.MODE_BOOTLOADER)


def query(port: str, timeout: float = 1.5) -> P.Hello:
    """Who is on this port (for ``shelfcast firmware list``); raises ``FlashError``."""
    with Flasher(port, timeout=0.3, retries=3) as f:
        try:
            return f.hello(timeout)
        except Disconnected as exc:
            raise FlashError(f"{port}: no shelf controller answered ({exc})") from None


def send_command(port: str, msg: P.Message, timeout: float = 2.0) -> tuple[P.Hello, P.Ack]:
    """One command to the controller on ``port`` (tare, calibrate, …), for field tools."""
    with Flasher(port, timeout=0.5, retries=3) as f:
        try:
            h = f.hello(timeout)
            if h.mode != P.MODE_APP:
                raise FlashError(f"controller {h.controller_id} is in its bootloader; flash it or power-cycle it")
            return h, f.request(msg)
        except Disconnected as exc:
            raise FlashError(f"{port}: no shelf controller answered ({exc})") from None


def identify(port: str, seconds: float, on_shown: Callable[[P.Hello], None] | None = None) -> P.Hello:
    """Show the controller's id and each slot's number on its shelf-edge displays for ``seconds``, then clear
    them: which shelf is which controller (``layout.shelves[].controller``) and which slot is which."""
    with Flasher(port, timeout=0.5, retries=3) as f:
        try:
            h = f.hello(2.0)
            if h.mode != P.MODE_APP:
                raise FlashError(f"controller {h.controller_id} is in its bootloader (no displays there); flash it "
                                 "or power-cycle it")
            if not h.capabilities & P.CAP_DISPLAY:
                raise FlashError(f"controller {h.controller_id} on {port} has no shelf-edge displays; find its shelf "
                                 "by unplugging its USB cable: its line goes from `sudo shelfcast firmware list`")
            name = P.sanitize_text(h.controller_id, P.NAME_MAX)
            try:
                for slot in range(h.slot_count):
                    f.request(P.Show(slot, name, None, P.sanitize_text(f"slot {slot}", P.PROMO_MAX)))
                if on_shown is not None:
                    on_shown(h)
                time.sleep(seconds)
            finally:  # also on Ctrl-C: the displays must not keep saying IDENTIFY to shoppers
                for slot in range(h.slot_count):
                    with contextlib.suppress(Disconnected):
                        f.request(P.Show(slot, "", None, "", clear=True))
            return h
        except Disconnected as exc:
            raise FlashError(f"{port}: no shelf controller answered ({exc})") from None


def flash(port: str, image: FirmwareImage, progress: Progress | None = None, *, timeout: float = 0.4,
          retries: int = 10, reconnect_timeout: float = 30.0, boot_timeout: float = 10.0) -> FlashResult:
    """Flash a verified image (``image.read_image``); raises ``FlashError`` with what to do."""
    if len(image.payload) != image.size:
        raise FlashError("image payload is missing or truncated; load it with read_image()")
    t0 = time.monotonic()
    f = Flasher(port, timeout, retries, reconnect_timeout)
    f.open()
    phase, old, offset = "app", "", 0  # where an interruption leaves the controller: app, bootloader, booting
    try:
        try:
            first = f.hello(2.0)
        except Disconnected as exc:
            raise FlashError(f"{port}: no shelf controller answered ({exc}); check the cable and the port") from None
        if first.hardware_id != image.hardware_id:
            raise FlashError(f"image is for hardware {image.hardware_id!r} but controller {first.controller_id} is "
                             f"{first.hardware_id!r}; nothing was written. Use the image built for "
                             f"{first.hardware_id}")
        old = first.firmware_str
        offset = resumed = -1
        sent = 0
        while True:
            try:
                phase = "bootloader"  # from the REBOOT below on, an interruption leaves it there
                f.to_bootloader()
                ack = f.request(P.FlashBegin(image.header))
                if ack.status == P.Status.BAD_IMAGE:
                    raise FlashError("the bootloader refused the image header (hardware or format); nothing "
                                     "was written")
                if ack.status != P.Status.OK or len(ack.data) < 4:
                    raise FlashError(f"bootloader refused FLASH_BEGIN ({P.Status.NAMES.get(ack.status)})")
                offset = struct.unpack_from("<I", ack.data)[0]
                if resumed < 0:
                    resumed = offset
                while offset < image.size:
                    chunk = image.payload[offset : offset + P.FLASH_CHUNK]
                    ack = f.request(P.FlashData(offset, chunk))
                    if ack.status in (P.Status.OK, P.Status.OFFSET) and len(ack.data) >= 4:
                        new_off = struct.unpack_from("<I", ack.data)[0]
                        sent += max(0, new_off - offset)
                        offset = new_off
                        if progress is not None:
                            progress(offset, image.size)
                    else:
                        raise FlashError(f"bootloader refused a chunk at {offset} "
                                         f"({P.Status.NAMES.get(ack.status)}); retry the flash")
                ack = f.request(P.FlashEnd())
                if ack.status == P.Status.FAIL and len(ack.data) >= 4:
                    continue  # the bootloader has less than we thought: resume from what it has
                if ack.status != P.Status.OK or ack.data[:32] != image.sha256:
                    raise FlashError("verification failed: the bootloader's SHA-256 of the staged image differs; "
                                     "the previous firmware stays active. Retry the flash")
                f.inbox.clear()
                phase = "booting"
                ack = f.request(P.FlashBoot())
                # WRONG_MODE: our first FLASH_BOOT arrived, its ACK was lost and the retry met the new app
                if ack.status not in (P.Status.OK, P.Status.WRONG_MODE):
                    raise FlashError(f"bootloader refused to boot the new image ({P.Status.NAMES.get(ack.status)})")
                break
            except Disconnected:
                try:
                    f.reconnect()  # cable pulled / line dead: wait for the port, then resume
                except FlashError as exc:
                    raise FlashError(f"{exc}. Waited {reconnect_timeout:g} s for it to come back; the controller "
                                     f"keeps what it staged in its bootloader (its firmware {old} stays): run the "
                                     "same flash again once it is back, it resumes") from None
        try:
            h = f.wait_hello(boot_timeout)
        except Disconnected:  # the HELLO after boot was lost, or the port re-enumerated: ask
            try:
                h = f.hello(boot_timeout)
            except Disconnected:
                f.reconnect()
                h = f.hello(boot_timeout)
        if h.boot_reason == P.BOOT_FALLBACK or h.firmware != image.version or h.mode != P.MODE_APP:
            raise FlashError(f"the new image {image.version_str} did not boot; controller {h.controller_id} fell "
                             f"back to {h.firmware_str}. Nothing else changed; check the image with the "
                             "firmware team")
        return FlashResult(h.controller_id, h.hardware_id, old, h.firmware_str, sent, f.retried, f.reconnects,
                           max(0, resumed), time.monotonic() - t0)
    except Disconnected as exc:
        raise FlashError(f"{port}: lost the controller ({exc}); run the flash again, it resumes") from None
    except KeyboardInterrupt:
        raise FlashInterrupted(_interrupted(port, image, phase, old, offset)) from None
    finally:
        f.close()


def _interrupted(port: str, image: FirmwareImage, phase: str, old: str, offset: int) -> str:
    """What a Ctrl-C left behind, and the way out (docs/technician-guide.md, "Flashing")."""
    again = f"`shelfcast firmware flash --port {port} IMAGE`"
    if phase == "app":
        return f"flash interrupted before anything was written; the controller on {port} still runs its firmware"
    if phase == "booting":
        return (f"flash interrupted while the controller on {port} was booting {image.version_str}; check with "
                f"`shelfcast firmware list --port {port}`, and if it is not {image.version_str} run {again} again")
    cur = f" {old}" if old else ""
    done = max(0, offset) / 1024
    return (f"flash interrupted at {done:.1f} of {image.size / 1024:.1f} KiB: the controller on {port} is "
            f"in its bootloader and sends no weights (its firmware{cur} is kept); run {again} again with the same "
            f"image (it resumes), or power-cycle the controller to boot its firmware{cur}")
