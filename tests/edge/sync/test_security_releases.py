"""Security audit (2026-12-01) of the signed-release path over a real Mosquitto with real Ed25519 keys.

Whoever can publish on the release topics but holds no signing key must not get a model in, and must not be able
to make the node refuse (and remember as refused) a correctly signed release by staging stray chunks first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge.sync.publish import build_release
from edge.sync.release import pack_chunk, sign_manifest
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")


def raw_pub(mosquitto: Any, topic: str, payload: bytes) -> None:
    import paho.mqtt.publish as pub

    pub.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=mosquitto.port, protocol=5)


def listen_for_chunks(node: Any, publish: Any, rel: Any) -> None:
    """Announce ``rel`` without its chunks: the node listens to the model chunk topic (it does only while a release
    that passed the checks at its announcement is staged), so stray chunks published now are staged first."""
    publish(rel, chunks=[])
    deadline = time.monotonic() + 10
    while not node.room.releases.listening() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.room.releases.listening(), "the node does not listen to the chunk topic (test setup)"


def test_a_stray_chunk_beyond_the_manifest_does_not_block_a_signed_release(
        node: Any, mosquitto: Any, upstream: Any, steps: Any, keys: Any, fakes: Any, tmp_path: Path,
        publish: Any) -> None:
    rel = build_release("model", fakes.write_model(tmp_path / "v2", "v2"), None, keys.private, chunk_size=64 * 1024)
    n = rel.manifest["chunks"]
    listen_for_chunks(node, publish, rel)
    # someone without the key stages a chunk for the same version first (well-formed, own sha256, index > n)
    raw_pub(mosquitto, TOPICS.release_chunk("model", n + 3), pack_chunk("model", "v2", n + 3, n + 4, b"junk" * 100))
    # and one whose index is beyond its own count
    raw_pub(mosquitto, TOPICS.release_chunk("model", n + 9), pack_chunk("model", "v2", n + 9, 2, b"junk"))
    stray = Path(node.room.data_dir) / "sync" / "staging" / "model" / "v2" / f"{n + 3:06d}.chunk"
    # a number beyond the manifest's count is not even written (since 2026-12-01, session 11; it was staged before)
    assert upstream.wait_for(lambda: node.room.releases.stats["chunks_unexpected"] >= 1, 10), \
        node.room.releases.stats
    assert not stray.exists()
    publish(rel)
    upstream.wait_step("v2", "swapped")
    assert node.rec.model.version == "v2"
    assert "refused" not in [s[0] for s in steps(upstream, "v2")]


def test_chunks_swapped_after_signing_are_refused_and_the_old_model_keeps_serving(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, fakes: Any, tmp_path: Path, publish: Any) -> None:
    good = build_release("model", fakes.write_model(tmp_path / "v3", "v3"), None, keys.private,
                         chunk_size=64 * 1024)
    evil = build_release("model", fakes.write_model(tmp_path / "v3e", "v3", quality="bad"), None, keys.other,
                         chunk_size=64 * 1024)
    # the signed manifest of the good release, with the other release's chunks (each with a correct own hash)
    publish(good, chunks=evil.chunks()[:good.manifest["chunks"]])
    refused = upstream.wait_step("v3", "refused")
    assert "wrong hash" in refused[0][2] or "truncated" in refused[0][2], refused
    assert node.rec.model.version == "v1"
    # a manifest re-signed by a key the node does not trust, naming the evil payload, is refused too
    evil_b = build_release("model", fakes.write_model(tmp_path / "v3b", "v3b", quality="bad"), None, keys.other,
                           chunk_size=64 * 1024)
    publish(evil_b, manifest=sign_manifest({k: v for k, v in evil_b.manifest.items()
                                                       if k not in ("signature", "key_id")}, keys.other))
    refused = upstream.wait_step("v3b", "refused")
    assert "bad signature" in refused[0][2], refused
    assert node.rec.model.version == "v1"
    assert not (Path(node.room.data_dir) / "models" / "active.json").exists()


def test_a_stray_copy_of_a_chunk_number_does_not_block_a_signed_release(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, fakes: Any, tmp_path: Path, publish: Any) -> None:
    rel = build_release("model", fakes.write_model(tmp_path / "v5", "v5"), None, keys.private, chunk_size=64 * 1024)
    listen_for_chunks(node, publish, rel)
    # someone without the key stages their own chunk #1 for the upcoming version (well-formed, own sha256)
    raw_pub(mosquitto, TOPICS.release_chunk("model", 1),
            pack_chunk("model", "v5", 1, rel.manifest["chunks"], b"junk" * 100))
    stray = Path(node.room.data_dir) / "sync" / "staging" / "model" / "v5" / "000001.chunk"
    assert upstream.wait_for(stray.exists, 10), "the stray chunk was not staged (test setup)"
    publish(rel)
    upstream.wait_step("v5", "swapped")
    assert node.rec.model.version == "v5"


def test_a_release_refused_as_truncated_is_installed_when_published_again(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, fakes: Any, tmp_path: Path, publish: Any) -> None:
    rel = build_release("model", fakes.write_model(tmp_path / "v6", "v6"), None, keys.private, chunk_size=64 * 1024)
    chunks = rel.chunks()
    last = len(chunks) - 1
    chunks[last] = pack_chunk("model", "v6", last, len(chunks), rel.blob[last * rel.chunk_size:][:-1000])
    publish(rel, chunks=chunks)  # a broken upload (or someone else's last chunk)
    refused = upstream.wait_step("v6", "refused")
    assert "truncated" in refused[0][2] and "re-publish" in refused[0][2], refused
    assert node.rec.model.version == "v1"
    node.room.releases.wait_idle()
    publish(rel)  # the publisher uploads the same signed release again
    upstream.wait_step("v6", "swapped")
    assert node.rec.model.version == "v6"
