"""Firmware image file (``.scfw``): a 68-byte header, then the payload.

The header names the hardware the image is for, its version, the payload size
and the payload's SHA-256, and carries its own CRC-32. The node checks all of
it before the first byte goes to a controller; the bootloader checks it again
(``docs/shelf-protocol.md`` §Flashing).
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEADER_SIZE", "FirmwareImage", "ImageError", "build_image", "parse_header", "read_image"]

MAGIC = b"SCFW"
HEADER_FORMAT = 1
HEADER_SIZE = 68
HWID_LEN = 16
_HEAD = struct.Struct("<4sBBH16sBBHI32s")  # 64 bytes, then crc32
MAX_IMAGE = 16 * 1024 * 1024


class ImageError(ValueError):
    """The image file is unusable; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    hardware_id: str
    version: tuple[int, int, int]
    size: int
    sha256: bytes
    header: bytes
    payload: bytes = b""

    @property
    def version_str(self) -> str:
        return ".".join(str(v) for v in self.version)


def build_image(payload: bytes, hardware_id: str, version: tuple[int, int, int]) -> bytes:
    hw = hardware_id.encode("ascii")
    if len(hw) > HWID_LEN:
        raise ImageError(f"hardware id {hardware_id!r} is longer than {HWID_LEN} ASCII characters")
    ma, mi, pa = version
    head = _HEAD.pack(MAGIC, HEADER_FORMAT, 0, HEADER_SIZE, hw.ljust(HWID_LEN, b"\x00"), ma, mi, pa,
                      len(payload), hashlib.sha256(payload).digest())
    return head + struct.pack("<I", binascii.crc32(head)) + payload


def parse_header(header: bytes) -> FirmwareImage:
    """Header fields (no payload); raises ``ImageError``."""
    if len(header) < HEADER_SIZE:
        raise ImageError(f"file is {len(header)} bytes, shorter than the {HEADER_SIZE}-byte image header")
    magic, fmt, _flags, hsize, hw, ma, mi, pa, size, digest = _HEAD.unpack_from(header)
    if magic != MAGIC:
        raise ImageError("not a ShelfCast firmware image (missing 'SCFW' magic); build one with "
                         "`shelfcast firmware pack`")
    if fmt != HEADER_FORMAT or hsize != HEADER_SIZE:
        raise ImageError(f"image header format {fmt} (size {hsize}) is not supported by this node; "
                         "update shelfcast")
    (crc,) = struct.unpack_from("<I", header, 64)
    if binascii.crc32(header[:64]) != crc:
        raise ImageError("image header is corrupt (CRC mismatch); download the image again")
    if size > MAX_IMAGE:
        raise ImageError(f"image claims {size} bytes, more than the {MAX_IMAGE} limit")
    return FirmwareImage(hw.rstrip(b"\x00").decode("ascii", "replace"), (ma, mi, pa), size, digest,
                         bytes(header[:HEADER_SIZE]))


def read_image(path: str | Path | bytes) -> FirmwareImage:
    """Read and fully verify an image (size and SHA-256); raises ``ImageError``."""
    if isinstance(path, bytes):
        data = path
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    img = parse_header(data)
    payload = data[HEADER_SIZE:]
    if len(payload) != img.size:
        raise ImageError(f"image payload is {len(payload)} bytes but the header says {img.size}: "
                         "the file is truncated or padded; download it again")
    if hashlib.sha256(payload).digest() != img.sha256:
        raise ImageError("image payload does not match the SHA-256 in its header: the file is corrupt "
                         "or was modified; download it again")
    return FirmwareImage(img.hardware_id, img.version, img.size, img.sha256, img.header, payload)
