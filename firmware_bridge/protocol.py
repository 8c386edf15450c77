"""Shelf-controller wire protocol v1: framing, CRC and messages.

One frame on the wire is ``COBS(header | payload | crc32) 0x00`` (see
``docs/shelf-protocol.md``, the normative description, with test vectors).

- COBS via the maintained ``cobs`` package (C extension): the 0x00 delimiter
  never occurs inside a frame, so a receiver resynchronises at the next 0x00
  after garbage or a truncated frame, with at most one frame lost.
- CRC-32 (ISO-HDLC, the zlib/Ethernet polynomial) via ``binascii.crc32``: in the
  standard library and implemented in C, available on every MCU SDK (or a
  1 KB table), and stronger than CRC-16 on 250-byte frames. ``crcmod`` would add
  nothing here.

The decoder never raises on bad input: every rejected byte is counted in
``DecoderStats`` and the stream continues at the next delimiter. Its buffer is
bounded by ``MAX_ENCODED``.
"""

from __future__ import annotations

import binascii
import struct
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from cobs import cobs

__all__ = [
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "NO_READING",
    "PROTOCOL_VERSION",
    "Ack",
    "Calibrate",
    "DecoderStats",
    "FlashBegin",
    "FlashBoot",
    "FlashData",
    "FlashEnd",
    "Frame",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "HelloRequest",
    "Log",
    "Message",
    "ProtocolError",
    "Reboot",
    "Samples",
    "SetRate",
    "Show",
    "Status",
    "Tare",
    "decode_message",
    "encode_frame",
    "sanitize_text",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 240
HEADER_LEN = 3  # version, type, seq
CRC_LEN = 4
MAX_RAW = HEADER_LEN + MAX_PAYLOAD + CRC_LEN
MAX_ENCODED = MAX_RAW + MAX_RAW // 254 + 1  # COBS overhead, delimiter excluded
NO_READING = -(2**31)  # a slot whose load cell gives no valid reading

# display text limits (the controller's display firmware relies on these)
NAME_MAX = 32
PROMO_MAX = 32


class ProtocolError(ValueError):
    """A frame that decoded and passed its CRC but whose payload is malformed."""


class Status:
    OK = 0
    BAD_ARG = 1
    UNSUPPORTED = 2
    BUSY = 3
    WRONG_MODE = 4
    BAD_IMAGE = 5
    OFFSET = 6
    FAIL = 7

    NAMES: ClassVar[dict[int, str]] = {
        0: "ok", 1: "bad argument", 2: "unsupported", 3: "busy", 4: "wrong mode (app vs bootloader)",
        5: "bad image", 6: "unexpected offset", 7: "failed",
    }


# -- framing ---------------------------------------------------------------------------------------


def encode_frame(msg_type: int, seq: int, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes to write for one message, delimiter included."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    raw = bytes((version & 0xFF, msg_type & 0xFF, seq & 0xFF)) + payload
    raw += struct.pack("<I", binascii.crc32(raw))
    return cobs.encode(raw) + b"\x00"


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose CRC checked out. ``version`` may still be one we do not speak."""

    version: int
    type: int
    seq: int
    payload: bytes


@dataclass(slots=True)
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    garbage_bytes: int = 0  # bytes discarded: bad COBS, over-long, too short, bad CRC
    resyncs: int = 0  # times the stream was resynchronised at a delimiter after bad bytes
    oversize: int = 0


class FrameDecoder:
    """Incremental, bounded COBS frame decoder. ``feed`` returns complete good frames."""

    __slots__ = ("_buf", "_skipping", "stats")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False  # inside an over-long run: drop until the next delimiter
        self.stats = DecoderStats()

    def reset(self) -> None:
        """Drop a partial frame (after a reconnect); the counters are kept."""
        self._buf.clear()
        self._skipping = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        stats = self.stats
        start = 0
        n = len(data)
        while start < n:
            end = data.find(b"\x00", start)
            if end < 0:
                chunk = data[start:]
                if self._skipping:
                    stats.garbage_bytes += len(chunk)
                elif len(self._buf) + len(chunk) > MAX_ENCODED:
                    stats.garbage_bytes += len(self._buf) + len(chunk)
                    stats.oversize += 1
                    self._buf.clear()
                    self._skipping = True
                else:
                    self._buf += chunk
                break
            if self._skipping:
                stats.garbage_bytes += end - start
                self._skipping = False
                stats.resyncs += 1
            else:
                if self._buf:
                    self._buf += data[start:end]
                    body = bytes(self._buf)
                    self._buf.clear()
                else:
                    body = data[start:end]
                if body:
                    frame = self._one(body)
                    if frame is not None:
                        out.append(frame)
            start = end + 1
        return out

    def _one(self, body: bytes) -> Frame | None:
        stats = self.stats
        if len(body) > MAX_ENCODED:
            stats.garbage_bytes += len(body) + 1
            stats.oversize += 1
            stats.resyncs += 1
            return None
        try:
            raw = cobs.decode(body)
        except cobs.DecodeError:
            stats.garbage_bytes += len(body) + 1
            stats.resyncs += 1
            return None
        if len(raw) < HEADER_LEN + CRC_LEN:
            stats.garbage_bytes += len(body) + 1
            stats.resyncs += 1
            return None
        (crc,) = struct.unpack_from("<I", raw, len(raw) - CRC_LEN)
        if binascii.crc32(memoryview(raw)[: len(raw) - CRC_LEN]) != crc:
            stats.crc_errors += 1
            stats.garbage_bytes += len(body) + 1
            stats.resyncs += 1
            return None
        stats.frames += 1
        return Frame(raw[0], raw[1], raw[2], raw[HEADER_LEN : len(raw) - CRC_LEN])


# -- messages --------------------------------------------------------------------------------------


def _str8(s: str) -> bytes:
    b = s.encode("ascii", "replace")[:255]
    return bytes((len(b),)) + b


def _read_str8(p: bytes, off: int) -> tuple[str, int]:
    if off >= len(p):
        raise ProtocolError("string length byte missing")
    n = p[off]
    if off + 1 + n > len(p):
        raise ProtocolError("string runs past the end of the payload")
    return p[off + 1 : off + 1 + n].decode("ascii", "replace"), off + 1 + n


@dataclass(frozen=True, slots=True)
class Message:
    TYPE: ClassVar[int] = -1

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, p: bytes) -> Message:
        raise NotImplementedError

    def frame(self, seq: int) -> bytes:
        return encode_frame(self.TYPE, seq, self.pack())


def _empty(cls: type[Message], p: bytes) -> Message:
    if p:
        raise ProtocolError(f"{cls.__name__} takes no payload, got {len(p)} bytes")
    return cls()


# controller -> node ---------------------------------------------------------------------------

MODE_APP = 0
MODE_BOOTLOADER = 1

BOOT_POWER_ON = 0
BOOT_BROWN_OUT = 1
BOOT_WATCHDOG = 2
BOOT_COMMANDED = 3
BOOT_NEW_IMAGE = 4
BOOT_FALLBACK = 5  # the new image did not confirm; previous image restored
BOOT_REASONS = {0: "power-on", 1: "brown-out", 2: "watchdog", 3: "commanded", 4: "new image", 5: "fallback"}

CAP_DISPLAY = 0x01
CAP_BOOTLOADER = 0x02

_HELLO = struct.Struct("<BBBBHBHBI")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Handshake: who the controller is. Sent at boot and in answer to HelloRequest."""

    TYPE: ClassVar[int] = 0x01
    controller_id: str
    hardware_id: str
    firmware: tuple[int, int, int]
    slot_count: int
    sample_rate_hz: int = 20
    mode: int = MODE_APP
    boot_reason: int = BOOT_POWER_ON
    capabilities: int = CAP_DISPLAY | CAP_BOOTLOADER
    uptime_ms: int = 0

    @property
    def firmware_str(self) -> str:
        return ".".join(str(v) for v in self.firmware)

    def pack(self) -> bytes:
        ma, mi, pa = self.firmware
        return (_HELLO.pack(self.mode, self.boot_reason, ma, mi, pa, self.slot_count, self.sample_rate_hz,
                            self.capabilities, self.uptime_ms & 0xFFFFFFFF)
                + _str8(self.controller_id) + _str8(self.hardware_id))

    @classmethod
    def unpack(cls, p: bytes) -> Hello:
        if len(p) < _HELLO.size:
            raise ProtocolError("HELLO too short")
        mode, reason, ma, mi, pa, slots, rate, caps, up = _HELLO.unpack_from(p)
        cid, off = _read_str8(p, _HELLO.size)
        hw, off = _read_str8(p, off)
        return cls(cid, hw, (ma, mi, pa), slots, rate, mode, reason, caps, up)


_SAMPLES_HEAD = struct.Struct("<IBB")
_SAMPLE_STRUCTS = [struct.Struct(f"<IBB{n}i") for n in range(61)]
MAX_SAMPLES = (MAX_PAYLOAD - _SAMPLES_HEAD.size) // 4  # 58


@dataclass(frozen=True, slots=True)
class Samples(Message):
    """One weight reading per slot (milligrams, tared and calibrated by the controller)."""

    TYPE: ClassVar[int] = 0x02
    t_ms: int  # controller uptime in ms (wraps at 2**32)
    first_slot: int
    mg: tuple[int, ...]

    def pack(self) -> bytes:
        return _SAMPLE_STRUCTS[len(self.mg)].pack(self.t_ms & 0xFFFFFFFF, self.first_slot, len(self.mg), *self.mg)

    @classmethod
    def unpack(cls, p: bytes) -> Samples:
        if len(p) < _SAMPLES_HEAD.size:
            raise ProtocolError("SAMPLES too short")
        n = p[5]
        if n > MAX_SAMPLES or len(p) != _SAMPLES_HEAD.size + 4 * n:
            raise ProtocolError(f"SAMPLES announces {n} slots but carries {len(p) - 6} bytes")
        vals = _SAMPLE_STRUCTS[n].unpack(p)
        return cls(vals[0], vals[1], vals[3:])


_HB = struct.Struct("<IBH")
HB_UNCALIBRATED = 0x01
HB_LOADCELL_FAULT = 0x02
HB_DISPLAY_FAULT = 0x04


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE: ClassVar[int] = 0x03
    uptime_ms: int
    flags: int = 0
    tx_overflows: int = 0

    def pack(self) -> bytes:
        return _HB.pack(self.uptime_ms & 0xFFFFFFFF, self.flags, self.tx_overflows & 0xFFFF)

    @classmethod
    def unpack(cls, p: bytes) -> Heartbeat:
        if len(p) != _HB.size:
            raise ProtocolError("HEARTBEAT must be 7 bytes")
        return cls(*_HB.unpack(p))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Answer to a node command: the command's seq, a status and optional data."""

    TYPE: ClassVar[int] = 0x04
    ack_seq: int
    status: int = Status.OK
    data: bytes = b""

    def pack(self) -> bytes:
        return bytes((self.ack_seq & 0xFF, self.status & 0xFF)) + self.data

    @classmethod
    def unpack(cls, p: bytes) -> Ack:
        if len(p) < 2:
            raise ProtocolError("ACK too short")
        return cls(p[0], p[1], bytes(p[2:]))


@dataclass(frozen=True, slots=True)
class Log(Message):
    TYPE: ClassVar[int] = 0x05
    level: int
    text: str

    def pack(self) -> bytes:
        return bytes((self.level & 0xFF,)) + self.text.encode("ascii", "replace")[: MAX_PAYLOAD - 1]

    @classmethod
    def unpack(cls, p: bytes) -> Log:
        if not p:
            raise ProtocolError("LOG too short")
        return cls(p[0], bytes(p[1:]).decode("ascii", "replace"))


# node -> controller ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloRequest(Message):
    TYPE: ClassVar[int] = 0x81

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, p: bytes) -> Message:
        return _empty(cls, p)


ALL_SLOTS = 0xFF


@dataclass(frozen=True, slots=True)
class Tare(Message):
    TYPE: ClassVar[int] = 0x82
    slot: int = ALL_SLOTS

    def pack(self) -> bytes:
        return bytes((self.slot,))

    @classmethod
    def unpack(cls, p: bytes) -> Tare:
        if len(p) != 1:
            raise ProtocolError("TARE takes 1 byte")
        return cls(p[0])


@dataclass(frozen=True, slots=True)
class Calibrate(Message):
    """A known weight (mg) now lies on the slot: the controller derives its scale."""

    TYPE: ClassVar[int] = 0x83
    slot: int
    known_mg: int

    def pack(self) -> bytes:
        return struct.pack("<Bi", self.slot, self.known_mg)

    @classmethod
    def unpack(cls, p: bytes) -> Calibrate:
        if len(p) != 5:
            raise ProtocolError("CALIBRATE takes 5 bytes")
        return cls(*struct.unpack("<Bi", p))


@dataclass(frozen=True, slots=True)
class SetRate(Message):
    TYPE: ClassVar[int] = 0x84
    hz: int

    def pack(self) -> bytes:
        return struct.pack("<H", self.hz)

    @classmethod
    def unpack(cls, p: bytes) -> SetRate:
        if len(p) != 2:
            raise ProtocolError("SET_RATE takes 2 bytes")
        return cls(*struct.unpack("<H", p))


SHOW_PRICE = 0x01
SHOW_CLEAR = 0x02


def sanitize_text(text: str, limit: int) -> str:
    """Display-safe text: printable ASCII 0x20-0x7E only, accents folded, at most ``limit`` chars."""
    folded = unicodedata.normalize("NFKD", text)
    out = []
    for ch in folded:
        o = ord(ch)
        if 0x20 <= o <= 0x7E:
            out.append(ch)
        elif unicodedata.combining(ch):
            continue
        elif ch in "\t\r\n":
            out.append(" ")
        else:
            out.append("?")
    s = "".join(out).strip()
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "~"


@dataclass(frozen=True, slots=True)
class Show(Message):
    """What a slot's shelf-edge display shows. Text must already be sanitized."""

    TYPE: ClassVar[int] = 0x85
    slot: int
    name: str
    price_cents: int | None = None
    promo: str = ""
    clear: bool = False

    def pack(self) -> bytes:
        flags = (SHOW_PRICE if self.price_cents is not None else 0) | (SHOW_CLEAR if self.clear else 0)
        return (struct.pack("<BBI", self.slot, flags, self.price_cents or 0) + _str8(self.name[:NAME_MAX])
                + _str8(self.promo[:PROMO_MAX]))

    @classmethod
    def unpack(cls, p: bytes) -> Show:
        if len(p) < 6:
            raise ProtocolError("SHOW too short")
        slot, flags, cents = struct.unpack_from("<BBI", p)
        name, off = _read_str8(p, 6)
        promo, off = _read_str8(p, off)
        if len(name) > NAME_MAX or len(promo) > PROMO_MAX:
            raise ProtocolError("SHOW text exceeds the display limits")
        return cls(slot, name, cents if flags & SHOW_PRICE else None, promo, bool(flags & SHOW_CLEAR))


@dataclass(frozen=True, slots=True)
class Reboot(Message):
    TYPE: ClassVar[int] = 0x86
    mode: int = MODE_APP

    def pack(self) -> bytes:
        return bytes((self.mode,))

    @classmethod
    def unpack(cls, p: bytes) -> Reboot:
        if len(p) != 1:
            raise ProtocolError("REBOOT takes 1 byte")
        return cls(p[0])


@dataclass(frozen=True, slots=True)
class FlashBegin(Message):
    """Bootloader: start (or resume) staging the image with this 68-byte header."""

    TYPE: ClassVar[int] = 0x90
    header: bytes

    def pack(self) -> bytes:
        return self.header

    @classmethod
    def unpack(cls, p: bytes) -> FlashBegin:
        return cls(bytes(p))


FLASH_CHUNK = 192


@dataclass(frozen=True, slots=True)
class FlashData(Message):
    TYPE: ClassVar[int] = 0x91
    offset: int
    data: bytes

    def pack(self) -> bytes:
        return struct.pack("<I", self.offset) + self.data

    @classmethod
    def unpack(cls, p: bytes) -> FlashData:
        if len(p) < 4:
            raise ProtocolError("FLASH_DATA too short")
        return cls(struct.unpack_from("<I", p)[0], bytes(p[4:]))


@dataclass(frozen=True, slots=True)
class FlashEnd(Message):
    TYPE: ClassVar[int] = 0x92

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, p: bytes) -> Message:
        return _empty(cls, p)


@dataclass(frozen=True, slots=True)
class FlashBoot(Message):
    TYPE: ClassVar[int] = 0x93

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, p: bytes) -> Message:
        return _empty(cls, p)


MESSAGES: dict[int, type[Message]] = {
    m.TYPE: m
    for m in (Hello, Samples, Heartbeat, Ack, Log, HelloRequest, Tare, Calibrate, SetRate, Show, Reboot,
              FlashBegin, FlashData, FlashEnd, FlashBoot)
}


def decode_message(frame: Frame) -> Message:
    """Parse a frame's payload; raises ``ProtocolError`` (never anything else) on a bad one."""
    cls = MESSAGES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{frame.type:02x}")
    try:
        return cls.unpack(frame.payload)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError) as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
