"""What this process costs the machine, read from Linux ``/proc`` for the benchmarks."""

from __future__ import annotations

from pathlib import Path


def io_write_bytes() -> int | None:
    """Bytes this process sent to the block layer (``/proc/self/io`` ``write_bytes``): what the SD card sees.

    None where the kernel does not expose it, so a benchmark reports "unknown" rather than zero.
    """
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
