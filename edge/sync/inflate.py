"""One bounded zlib inflater for everything the cloud (or a node) sends compressed.

A zlib bomb is small on the wire and huge inflated (a 1 MB message can inflate to GBs), so the output is capped
while it is produced, never checked after: ``zlib.decompressobj`` with ``max_length``, at most ``STEP`` a call,
never produces more than ``limit + 1`` bytes (the output and about 2 MB in RAM), and one byte past the limit is
the refusal. The outbox's ``decode_payload`` (one MQTT message) and the release manager's ``_inflate`` (a release
read from its chunk files block by block) both use it; each turns ``InflateLimit`` into its own error
(``PayloadTooLarge``, ``TooLarge``) with the message its callers expect.

A stream that stops before its end is refused (``zlib.error``); data after the end of the stream is ignored.
Nothing here imports the rest of ``edge``: any module may use it without an import cycle.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["InflateLimit", "inflate_bounded"]

# the most one zlib call may return: CPython's zlib gathers a call's output in blocks and joins them at the end
# (twice the call's output in RAM for a moment), so one call of limit + 1 bytes held 2 x the limit (128 MB for the
# cloud ingest's 64 MB); in steps of 1 MB a bomb holds the limit + about 2 MB
STEP = 1 << 20


class InflateLimit(ValueError):
    """The stream decompresses to more than ``limit`` bytes (the inflater stopped at ``limit + 1``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes decompressed")
        self.limit = limit


def inflate_bounded(blocks: Iterable[bytes], limit: int) -> bytearray:
    """The zlib stream in ``blocks`` (any split), decompressed, if it is at most ``limit`` bytes.

    Raises ``InflateLimit`` as soon as the output passes ``limit`` (never more than ``limit + 1`` bytes held),
    ``zlib.error`` on garbage and on a stream that stops before its end. Blocks after the end of the stream are
    read and ignored, as is any data after it in the last block. A bytearray, not copied to bytes: ``json`` and
    pydantic parse it as it is."""
    z = zlib.decompressobj()
    out = bytearray()
    for block in blocks:
        while block and not z.eof:
            out += z.decompress(block, min(limit + 1 - len(out), STEP))  # max_length: never past the limit + 1
            if len(out) > limit:
                raise InflateLimit(limit)
            block = z.unconsumed_tail
    out += z.flush()
    if len(out) > limit:
        raise InflateLimit(limit)
    if not z.eof:
        raise zlib.error("incomplete or truncated stream")
    return out
