"""What the cloud sends can never exhaust a node's memory or card: a snapshot that decompresses past
``mqtt.sync.max_snapshot_mb`` (a zlib bomb), a model archive of too many entries or that unpacks past its limit, a
batch that decompresses past the ingest's limit, a flood of junk manifests that would make the node forget a
refused release (and download it again), and chunks of made-up versions sent while the node listens for chunks.
Real Mosquitto, real Ed25519 signatures, real files; the release that follows each refusal is still installed."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.sync.publish import build_release
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")
MB = 1 << 20


def padded_catalogue(name: str, pad: int) -> bytes:
    """A valid catalogue snapshot with ``pad`` bytes of JSON whitespace: it compresses to almost nothing."""
    return (b'{"products": [{"sku": "sku-1", "name": "' + name.encode() + b'", "price": 1.5}' + b" " * pad + b"]}")


def test_a_snapshot_that_decompresses_past_the_limit_is_refused_counted_and_the_next_one_applies(
        node: Any, upstream: Any, publish: Any, keys: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A 33 MB catalogue in a ~33 KB release (limit 32 MB): refused with one line naming the limit and the fix;
    the node keeps serving and applies the next snapshot. The old node inflated it whole and applied it."""
    bomb = padded_catalogue("bomb", 33 * MB)
    rel = build_release("catalogue", zlib.compress(bomb, 9), "2026.12.01-000001", keys.private, fmt="json+zlib")
    assert rel.manifest["size"] < 100_000
    del bomb
    publish(rel)
    detail = upstream.wait_step("2026.12.01-000001", "refused", 30)[-1][2]
    assert "larger than 32 MB" in detail and "mqtt.sync.max_snapshot_mb" in detail, detail
    assert "publish it in parts" in detail and "new version" in detail, detail  # what to do
    assert node.room.releases.health()["too_large"] == 1
    lines = [r for r in caplog.records if "larger than 32 MB" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "WARNING", [r.getMessage() for r in lines]
    node.store.flush()
    assert node.store.product("sku-1") is None  # nothing of it applied
    assert node.rec.model.version == "v1"  # the model keeps serving
    publish(build_release("catalogue", zlib.compress(padded_catalogue("fine", 1000)), "2026.12.01-000002",
                          keys.private, fmt="json+zlib"))
    upstream.wait_step("2026.12.01-000002", "applied", 30)
    node.store.flush()
    assert node.store.product("sku-1").name == "fine"  # type: ignore[union-attr]
    # the refused one is remembered: re-announced, it is neither downloaded nor reported again
    n = len(upstream.of("/release/status"))
    publish(rel)
    publish(build_release("catalogue", zlib.compress(padded_catalogue("later", 10)), "2026.12.01-000003",
                          keys.private, fmt="json+zlib"))
    upstream.wait_step("2026.12.01-000003", "applied", 30)
    again = [r for r in upstream.of("/release/status")[n:] if r.get("version") == "2026.12.01-000001"]
    assert again == [], again


def test_the_snapshot_limit_is_the_config_key(mosquitto: Any, node_config: Any, keys: Any, start_node: Any,
                                              upstream: Any, publish: Any) -> None:
    node = start_node(node_config(mosquitto.url, public_key=keys.public_path, sync={"max_snapshot_mb": 1}))
    publish(build_release("catalogue", padded_catalogue("plain", 2 * MB), "2026.12.01-000001", keys.private,
                          fmt="json"))  # uncompressed: capped all the same
    detail = upstream.wait_step("2026.12.01-000001", "refused", 30)[-1][2]
    assert "larger than 1 MB" in detail, detail
    publish(build_release("catalogue", zlib.compress(padded_catalogue("ok", 900_000)), "2026.12.01-000002",
                          keys.private, fmt="json+zlib"))
    upstream.wait_step("2026.12.01-000002", "applied", 30)
    assert node.room.releases.health()["too_large"] == 1


def tar_release(fakes: Any, tmp: Path, version: str, *, extra: int = 0, big: int = 0, gz: bool = False) -> bytes:
    """A model archive (``fakes.write_model``) with ``extra`` empty files and a zero file of ``big`` bytes."""
    d = fakes.write_model(tmp / version, version)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for p in sorted(d.iterdir()):
            tf.add(p, arcname=p.name)
        for i in range(extra):
            tf.addfile(tarfile.TarInfo(f"junk/{i:05d}"), io.BytesIO(b""))
        if big:
            info = tarfile.TarInfo("zeros.bin")
            info.size = big
            tf.addfile(info, io.BytesIO(bytes(big)))
    return buf.getvalue()


def test_a_model_archive_of_too_many_entries_or_too_big_unpacked_is_refused(
        node: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.sync.release as r

    models = Path(node.room.data_dir) / "models"
    many = tar_release(fakes, tmp_path, "2026.12.01-many", extra=1000)
    publish(build_release("model", many, "2026.12.01-many", keys.private, fmt="tar"))
    detail = upstream.wait_step("2026.12.01-many", "refused", 30)[-1][2]
    assert "more than 1000 entries" in detail, detail
    # a gzip'd archive (tarfile opens those too) of a zero file: 40 KB sent, 8 MB unpacked; the limit lowered to
    # 4 MB so the test need not unpack 512 MB to reach the real one
    monkeypatch.setattr(r, "MAX_MODEL_UNPACKED", 4 * MB, raising=False)
    bomb = tar_release(fakes, tmp_path, "2026.12.01-bomb", big=8 * MB, gz=True)
    assert len(bomb) < 100_000
    publish(build_release("model", bomb, "2026.12.01-bomb", keys.private, fmt="tar"))
    detail = upstream.wait_step("2026.12.01-bomb", "refused", 30)[-1][2]
    assert "unpacks to more than 4 MB" in detail, detail
    assert not (models / "2026.12.01-bomb").exists() and not list(models.glob(".*.tmp"))
    assert node.rec.model.version == "v1"
    publish(build_release("model", tar_release(fakes, tmp_path, "2026.12.01-ok"), "2026.12.01-ok", keys.private,
                          fmt="tar"))
    upstream.wait_step("2026.12.01-ok", "swapped", 30)


def test_a_batch_that_decompresses_past_the_limit_is_refused_by_the_cloud_ingest() -> None:
    from edge.sync.outbox import PayloadTooLarge, decode_payload

    head = b'{"schema":"shelfcast.batch/1","store":"s1","node":"n1","boot":"b","items":['
    ok = zlib.compress(head + b'{"id":"a","t":1}' + b" " * MB + b"]}")
    assert decode_payload(ok)["items"] == [{"id": "a", "t": 1}]
    bomb = zlib.compress(head + b" " * (65 * MB) + b"]}", 9)
    assert len(bomb) < 200_000
    t0 = time.process_time()
    with pytest.raises(PayloadTooLarge, match="more than 64 MB decompressed"):
        decode_payload(bomb)
    assert time.process_time() - t0 < 2.0


def junk_manifests(n: int, real: dict[str, Any]) -> list[bytes]:
    """``n`` manifests anyone who can publish can send (bad signatures), plus the real one with a bad signature."""
    bad = base64.b64encode(b"\x00" * 64).decode()
    out = [json.dumps({**real, "version": f"2026.12.02-junk{i:04d}", "sha256": f"{i:064x}",
                       "signature": bad}).encode() for i in range(n)]
    out.append(json.dumps({**real, "signature": bad}).encode())  # the refused release itself, re-signed badly
    return out


def publish_raw(port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"junk-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_flood_of_junk_manifests_does_not_make_the_node_download_a_refused_release_again(
        node: Any, mosquitto: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    """A model older than the serving one (by the ``created`` inside it) is downloaded once, refused and
    remembered. 250 bogus manifests (and the refused one re-sent with a bad signature) used to push it out of
    the node's memory of 200, so its next announcement downloaded it again."""
    def model(version: str, created: str) -> Path:
        d = fakes.write_model(tmp_path / version, version)
        (d / "manifest.json").write_text(json.dumps({"version": version, "created": created}))
        return d

    publish(build_release("model", model("2026.11.30-v5", "2026-11-30T19:28:55+00:00"), None, keys.private))
    upstream.wait_step("2026.11.30-v5", "swapped", 30)
    old = build_release("model", model("2026.10.01", "2026-10-01T08:00:00+00:00"), None, keys.private)
    publish(old)
    upstream.wait_step("2026.10.01", "refused", 30)
    rm = node.room.releases
    rm.wait_idle()
    chunks = rm.stats["chunks"]
    assert chunks >= old.manifest["chunks"]  # it was downloaded once
    refused = rm.stats["not_downloaded"]
    publish_raw(mosquitto.port, TOPICS.release_manifest("model"), junk_manifests(250, old.manifest))
    deadline = time.monotonic() + 60
    while rm.stats["not_downloaded"] < refused + 250 and time.monotonic() < deadline:
        time.sleep(0.05)
    publish_raw(mosquitto.port, TOPICS.release_manifest("model"), [json.dumps(old.manifest).encode()])
    # a newer release after it: once it is swapped in, the replay above was handled
    newer = build_release("model", model("2026.12.03", "2026-12-03T06:00:00+00:00"), None, keys.private)
    publish(newer)
    upstream.wait_step("2026.12.03", "swapped", 30)
    rm.wait_idle()
    assert rm.stats["chunks"] == chunks + newer.manifest["chunks"], "the refused release was downloaded again"
    # every junk manifest refused at once; the bad copy of the refused release skipped (its refusal stays)
    assert rm.stats["not_downloaded"] == refused + 250, rm.stats
    seen = [s for s in upstream.of("/release/status") if s["version"] == "2026.10.01"]
    assert [s["step"] for s in seen].count("staging") == 1, seen  # staged once, at its first announcement
    remembered = json.loads((Path(node.room.data_dir) / "sync" / "releases.json").read_text())
    assert f"model/2026.10.01/{old.manifest['sha256']}" in remembered
    assert len(remembered) <= 200 + 500


def test_chunks_of_releases_not_announced_are_not_written_and_a_release_whose_chunks_came_first_still_installs(
        node: Any, mosquitto: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    """While a release is staged (here: one whose upload stopped half-way, listened to for up to a day) the node
    listens to its kind's chunk topics: anyone who can publish there could make it write chunks of made-up
    versions to the card, 128 KB each, kept until the staging area is pruned. Only chunks of a release whose
    manifest was accepted, numbered below its count, are written now."""
    import paho.mqtt.publish as mqtt_publish

    from edge.sync.release import pack_chunk

    half = build_release("model", fakes.write_model(tmp_path / "v2", "v2"), "2026.12.01-v2", keys.private,
                         chunk_size=64 * 1024)
    publish(half, chunks=half.chunks()[:2])  # the upload stops after 2 chunks: staged, listened to
    rm = node.room.releases
    assert upstream.wait_for(lambda: rm.stats["chunks"] >= 2 and rm.listening(), 10), rm.stats
    staging = Path(node.room.data_dir) / "sync" / "staging" / "model"
    junk = [{"topic": TOPICS.release_chunk("model", i % 8),
             "payload": pack_chunk("model", f"2026.12.01-junk{i:03d}", i % 8, 8, bytes(16_000)), "qos": 1}
            for i in range(300)]
    junk.append({"topic": TOPICS.release_chunk("model", 40),  # the staged release's version, a number past it
                 "payload": pack_chunk("model", "2026.12.01-v2", 40, 41, bytes(16_000)), "qos": 1})
    mqtt_publish.multiple(junk, hostname="127.0.0.1", port=mosquitto.port, protocol=mqtt.MQTTv5)
    upstream.wait_for(lambda: rm.stats.get("chunks_unexpected", 0) >= 301 or len(list(staging.iterdir())) > 300, 20)
    dirs = sorted(p.name for p in staging.iterdir())
    assert dirs == ["2026.12.01-v2"], f"{len(dirs)} staging dirs"  # before: 301 with the junk, 4.8 MB
    assert rm.stats["chunks_unexpected"] == 301, rm.stats
    assert sorted(p.name for p in (staging / "2026.12.01-v2").glob("*.chunk")) == ["000000.chunk", "000001.chunk"]
    # a newer release of the kind, published as `shelfcast model publish` does (its chunks first, then its
    # manifest) while the node still listens for the stalled one's chunks: its chunks came before its manifest
    # and were not written; accepting its manifest has the broker send them again
    newer = build_release("model", fakes.write_model(tmp_path / "v3", "v3"), "2026.12.01-v3", keys.private,
                          chunk_size=64 * 1024)
    publish(newer)
    upstream.wait_step("2026.12.01-v3", "swapped", 30)
    assert node.rec.model.version == "v3"
