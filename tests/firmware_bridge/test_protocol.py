"""Protocol v1: the doc's hex test vectors, round trips, resync after garbage, fuzzing."""

from __future__ import annotations

import binascii
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as P
from firmware_bridge.image import ImageError, build_image, parse_header, read_image

DOC = Path(__file__).resolve().parents[2] / "docs" / "shelf-protocol.md"

VECTORS: dict[str, tuple[int, P.Message]] = {
    "V1": (1, P.Hello("shelf-a1", "SC-LC8-r2", (1, 4, 2), 8, 20, 0, 0, 3, 1500)),
    "V2": (2, P.Samples(1000, 0, (1234567, -250, 0, P.NO_READING))),
    "V3": (3, P.Heartbeat(60000, 0, 0)),
    "V4": (4, P.Ack(7, 0, b"")),
    "V5": (1, P.HelloRequest()),
    "V6": (2, P.Tare(255)),
    "V7": (3, P.Calibrate(2, 500000)),
    "V8": (4, P.SetRate(20)),
    "V9": (5, P.Show(3, "Whole Milk 1 gal", 349, "2 for $6")),
    "V10": (6, P.Reboot(1)),
    "V11": (7, P.FlashData(0, bytes([0, 1, 2, 3]))),
    "V12": (8, P.FlashEnd()),
}


def doc_vectors() -> dict[str, tuple[bytes, bytes]]:
    text = DOC.read_text()
    out = {}
    for m in re.finditer(r"^(V\d+) .*\nraw:\s+([0-9a-f ]+)\nwire:\s+([0-9a-f ]+)$", text, re.M):
        out[m.group(1)] = (bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3)))
    return out


def test_doc_has_every_vector() -> None:
    assert set(doc_vectors()) == set(VECTORS)


@pytest.mark.parametrize("name", [f"V{i}" for i in range(1, len(VECTORS) + 1)])
def test_vector_encodes_and_decodes_as_documented(name: str) -> None:
    raw, wire = doc_vectors()[name]
    seq, msg = VECTORS[name]
    assert msg.frame(seq) == wire
    assert raw[0] == P.PROTOCOL_VERSION and raw[2] == seq
    assert binascii.crc32(raw[:-4]) == int.from_bytes(raw[-4:], "little")
    frames = P.FrameDecoder().feed(wire)
    assert len(frames) == 1 and frames[0].type == msg.TYPE and frames[0].seq == seq
    assert P.decode_message(frames[0]) == msg


def test_crc_is_crc32_iso_hdlc() -> None:
    assert binascii.crc32(b"123456789") == 0xCBF43926  # the check value the doc names


def test_every_message_round_trips() -> None:
    msgs: list[P.Message] = [m for _, m in VECTORS.values()] + [
        P.Log(2, "load cell 3 saturated"), P.FlashBoot(), P.FlashBegin(b"x" * 68),
        P.Show(0, "", None, "", clear=True), P.Calibrate(1, -5), P.Ack(9, P.Status.OFFSET, b"\x10\x00\x00\x00"),
        P.Samples(2**32 - 1, 3, tuple(range(-29, 29))),
    ]
    for i, m in enumerate(msgs):
        (fr,) = P.FrameDecoder().feed(m.frame(i))
        assert P.decode_message(fr) == m


def test_resync_after_garbage_and_truncated_frames_is_counted() -> None:
    good = [P.Samples(i, 0, (i, -i)).frame(i) for i in range(1, 6)]
    stream = good[0] + b"\x13\x37garbage" + good[1][:7] + b"\x00" + good[2] + good[3][:-3] + good[4]
    dec = P.FrameDecoder()
    got = []
    for k in range(0, len(stream), 5):  # arbitrary chunking must not matter
        got += dec.feed(stream[k : k + 5])
    # frame 4 lost its delimiter, so it merged with frame 5: both are dropped, nothing else
    msgs = [P.decode_message(f) for f in got]
    assert [m.t_ms for m in msgs if isinstance(m, P.Samples)] == [1, 3]
    assert dec.stats.garbage_bytes > 0 and dec.stats.resyncs >= 2
    assert dec.stats.crc_errors + dec.stats.resyncs >= 3


def test_bad_crc_is_rejected_and_counted() -> None:
    f = bytearray(P.Heartbeat(5).frame(1))
    f[5] ^= 0x01
    dec = P.FrameDecoder()
    assert dec.feed(bytes(f)) == []
    assert dec.stats.crc_errors == 1


def test_overlong_run_is_dropped_with_bounded_buffer() -> None:
    dec = P.FrameDecoder()
    for _ in range(100):
        assert dec.feed(b"\x01" * 1000) == []
        assert dec.buffered <= P.MAX_ENCODED
    assert dec.feed(b"\x00" + P.Heartbeat(1).frame(2))[0].seq == 2
    assert dec.stats.oversize >= 1 and dec.stats.garbage_bytes >= 100_000


def test_other_protocol_version_is_delivered_as_such() -> None:
    fr = P.FrameDecoder().feed(P.encode_frame(P.Hello.TYPE, 1, b"", version=2))
    assert fr[0].version == 2  # the room turns this into a per-controller error


def test_malformed_payloads_raise_protocol_error_only() -> None:
    for typ in [*P.MESSAGES, 0x7F]:
        for payload in (b"", b"\x05", b"\xff" * 7, b"\x03\x01" + b"\x00" * 20):
            try:
                P.decode_message(P.Frame(1, typ, 0, payload))
            except P.ProtocolError:
                pass


def test_display_text_is_sanitized_to_the_documented_charset() -> None:
    assert P.sanitize_text("Crème fraîche — 200 g", 32) == "Creme fraiche ? 200 g"
    s = P.sanitize_text("x" * 50, P.NAME_MAX)
    assert len(s) == 32 and s.endswith("~")
    assert all(0x20 <= ord(c) <= 0x7E for c in P.sanitize_text("日本\t\nok", 32))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), max_size=20))
def test_fuzz_decoder_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    dec = P.FrameDecoder()
    for c in chunks:
        for fr in dec.feed(c):
            try:
                P.decode_message(fr)
            except P.ProtocolError:
                pass
        assert dec.buffered <= P.MAX_ENCODED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=80), st.integers(0, 255)), min_size=1, max_size=10),
       st.binary(max_size=300))
def test_fuzz_good_frames_survive_interleaved_garbage(items: list[tuple[bytes, int]], junk: bytes) -> None:
    dec = P.FrameDecoder()
    dec.feed(junk + b"\x00")  # garbage first, then a delimiter: the stream is clean again
    sent = [P.encode_frame(0x05, seq, b"\x01" + payload) for payload, seq in items]
    got = dec.feed(b"".join(sent))
    assert [(f.seq, f.payload) for f in got] == [(seq, b"\x01" + p) for p, seq in items]


def test_decoder_memory_is_bounded_under_a_megabyte_of_noise() -> None:
    import random

    rnd = random.Random(7)
    noise = [rnd.randbytes(5000) for _ in range(200)]
    dec = P.FrameDecoder()
    tracemalloc.start()
    try:
        for chunk in noise:
            dec.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000
    assert dec.stats.garbage_bytes > 900_000


def test_image_header_round_trip_and_refusals(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    blob = build_image(payload, "SC-LC8-r2", (1, 5, 0))
    img = read_image(blob)
    assert (img.hardware_id, img.version, img.size) == ("SC-LC8-r2", (1, 5, 0), len(payload))
    assert parse_header(blob[:68]).sha256 == img.sha256
    bad = bytearray(blob)
    bad[100] ^= 0xFF
    with pytest.raises(ImageError, match="SHA-256"):
        read_image(bytes(bad))
    with pytest.raises(ImageError, match="truncated"):
        read_image(blob[:-1])
    hdr = bytearray(blob)
    hdr[10] ^= 0x01
    with pytest.raises(ImageError, match="CRC"):
        read_image(bytes(hdr))
    with pytest.raises(ImageError, match="magic"):
        read_image(b"ELF" + blob[3:])
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.scfw")
