"""``edge.sync.inflate.inflate_bounded``: the one zlib inflater of the outbox's ``decode_payload`` and the release
manager's ``_inflate``. A bomb stops at ``limit + 1`` bytes of output (memory measured with tracemalloc, and the
input is not read to its end); exactly ``limit`` bytes pass; a truncated stream is refused; any split of the input
(one byte a block) gives the same bytes; data after the end of the stream is ignored. Real zlib streams."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest

from edge.sync.inflate import InflateLimit, inflate_bounded

MB = 1 << 20


def _blocks(data: bytes, size: int, pulled: list[int]) -> Iterator[bytes]:
    """``data`` in blocks of ``size`` bytes; ``pulled[0]`` counts the blocks the inflater asked for."""
    for i in range(0, len(data), size):
        pulled[0] += 1
        yield data[i:i + size]


def test_a_bomb_stops_at_the_limit_plus_one_byte_of_output() -> None:
    bomb = zlib.compress(bytes(64 * MB), 9)  # ~64 KB that inflate to 64 MB
    assert len(bomb) < 100_000
    pulled = [0]
    tracemalloc.start()
    try:
        with pytest.raises(InflateLimit, match=f"more than {MB} bytes decompressed") as caught:
            inflate_bounded(_blocks(bomb, 4096, pulled), MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.limit == MB and isinstance(caught.value, ValueError)
    # limit + 1 bytes held (the bytearray may over-allocate a little), never the 64 MB
    assert peak < 3 * MB, f"{peak / MB:.1f} MB held while inflating a bomb with a 1 MB limit"
    assert pulled[0] < len(bomb) // 4096, "the rest of the bomb was read after the limit was passed"


def test_exactly_the_limit_passes_one_byte_more_is_refused() -> None:
    data = os.urandom(1000) + bytes(50_000)
    packed = zlib.compress(data)
    out = inflate_bounded([packed], len(data))
    assert isinstance(out, bytearray) and out == data
    with pytest.raises(InflateLimit, match=f"more than {len(data) - 1} bytes"):
        inflate_bounded([packed], len(data) - 1)
    assert inflate_bounded([zlib.compress(b"")], 0) == b""


def test_a_truncated_stream_is_refused() -> None:
    packed = zlib.compress(os.urandom(20_000))
    for cut in (1, 10, len(packed) // 2, len(packed) - 1):
        with pytest.raises(zlib.error, match="incomplete or truncated stream"):
            inflate_bounded([packed[:cut]], MB)
    with pytest.raises(zlib.error, match="incomplete or truncated stream"):
        inflate_bounded([], MB)  # nothing at all
    with pytest.raises(zlib.error):
        inflate_bounded([b"\x78\x9c" + b"not deflate at all"], MB)  # garbage


def test_any_split_gives_the_same_bytes_and_trailing_data_is_ignored() -> None:
    data = (b'{"schema":"shelfcast.batch/1","items":[' + b'{"id":"a","t":1},' * 2000)[:-1] + b"]}"
    packed = zlib.compress(data, 9)
    for size in (1, 2, 7, 4096, len(packed)):
        pulled = [0]
        assert inflate_bounded(_blocks(packed, size, pulled), len(data)) == data, size
        assert pulled[0] == -(-len(packed) // size)
    # after the end of the stream: ignored, in the same block or in the blocks after it (all still read)
    pulled = [0]
    assert inflate_bounded(_blocks(packed + b"trailing junk" * 100, 5, pulled), len(data)) == data
    assert pulled[0] == -(-(len(packed) + 1300) // 5)
    # one byte over the limit, found in the middle of many 1-byte blocks
    with pytest.raises(InflateLimit):
        inflate_bounded(_blocks(packed, 1, [0]), len(data) - 1)


def _peak(blocks: list[bytes], limit: int) -> tuple[int, bytearray | None]:
    """The most memory traced while inflating, and the output (None: refused as too large)."""
    tracemalloc.start()
    try:
        try:
            out: bytearray | None = inflate_bounded(blocks, limit)
        except InflateLimit:
            out = None
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_a_stream_in_one_piece_is_held_about_once() -> None:
    """One MQTT message (the cloud ingest's decode_payload) or one 1 MB block of a release: zlib joins a call's
    output at its end (twice that output in RAM for a moment), so one call of up to limit + 1 bytes held twice the
    limit (128 MB for the ingest's 64 MB). In 1 MB steps: the limit and about 2 MB, for a bomb or a real stream."""
    data = b'{"items":[' + b" " * (8 * MB - 12) + b"]}"
    packed = zlib.compress(data, 9)
    peak, out = _peak([packed], 8 * MB)
    assert out == data
    assert peak < 8 * MB + 3 * MB, f"{peak / MB:.1f} MB held for an 8 MB stream in one piece"
    del out
    peak, out = _peak([zlib.compress(bytes(64 * MB), 9)], 8 * MB)
    assert out is None
    assert peak < 8 * MB + 3 * MB, f"{peak / MB:.1f} MB held for a bomb in one piece, limit 8 MB"
