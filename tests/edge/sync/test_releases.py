"""Signed releases over a real Mosquitto: good ones swap in, bad ones are refused and reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.sync.publish import build_release
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")


def test_good_release_swaps_in_keeps_previous_and_rolls_back_on_command(
        node: Any, mosquitto: Any, upstream: Any, steps: Any, keys: Any, fakes: Any, tmp_path: Path,
        publish: Any) -> None:
    rel = build_release("model", fakes.write_model(tmp_path / "v2", "v2"), None, keys.private, chunk_size=64 * 1024)
    assert rel.manifest["version"] == "v2" and rel.manifest["chunks"] >= 4
    assert all(len(c) <= 128 * 1024 for c in rel.chunks())
    publish(rel)
    upstream.wait_step("v2", "swapped")
    assert node.rec.model.version == "v2"
    names = [s[0] for s in steps(upstream, "v2")]
    for step in ("manifest", "staging", "verified", "staged", "loaded", "canary", "swapped"):
        assert step in names, names
    pointer = json.loads((Path(node.room.data_dir) / "models" / "active.json").read_text())
    assert pointer["version"] == "v2"
    assert node.room.releases.previous is not None and node.room.releases.previous.version == "v1"
    # the same retained release delivered again (e.g. after a reconnect) is not processed twice
    publish(rel)
    node.room.releases.wait_idle()
    assert [s[0] for s in steps(upstream, "v2")].count("swapped") == 1
    # rollback on command
    mosquitto_pub(mosquitto, TOPICS.cmd(), {"id": "c1", "command": "rollback"})
    res = upstream.wait_for(lambda: [r for r in upstream.of("/cmd/result") if r.get("cmd") == "c1"])
    assert res and res[0]["ok"], res
    assert node.rec.model.version == "v1"
    upstream.wait_step("v2", "rolled_back")


def mosquitto_pub(mosquitto: Any, topic: str, obj: Any, retain: bool = False) -> None:
    import paho.mqtt.publish as pub

    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    pub.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=mosquitto.port,
               protocol=5)


@pytest.mark.parametrize("case", ["truncated", "wrong_hash", "unsigned", "other_key", "wrong_shape", "worse_canary",
                                  "truncated_model_file"])
def test_bad_release_is_refused_old_model_keeps_serving(
        case: str, node: Any, mosquitto: Any, upstream: Any, steps: Any, keys: Any, fakes: Any,
        tmp_path: Path, publish: Any) -> None:
    from edge.sync.release import sign_manifest

    version = f"bad-{case.replace('_', '-')}"
    d = fakes.write_model(tmp_path / version, version,
                          quality="bad" if case == "worse_canary" else "good",
                          session_shape=[1, 8] if case == "wrong_shape" else None)
    if case == "truncated_model_file":
        f = d / "model.tflite"
        f.write_bytes(f.read_bytes()[:5000])
    key = {"unsigned": None, "other_key": keys.other}.get(case, keys.private)
    rel = build_release("model", d, None, key, chunk_size=64 * 1024)
    kw: dict[str, Any] = {}
    if case == "truncated":  # the chunks stop short of what the (signed) manifest promises
        chunks = rel.chunks()
        short = rel.blob[: len(rel.blob) - 1000]
        from edge.sync.release import pack_chunk

        last = len(chunks) - 1
        chunks[last] = pack_chunk("model", version, last, len(chunks), short[last * rel.chunk_size:])
        kw["chunks"] = chunks
    if case == "wrong_hash":  # a correctly signed manifest whose hash is not the payload's
        fields = {k: v for k, v in rel.manifest.items() if k not in ("signature", "key_id")}
        fields["sha256"] = "0" * 64
        kw["manifest"] = sign_manifest(fields, keys.private)
    publish(rel, **kw)
    refused = upstream.wait_step(version, "refused")
    assert node.rec.model.version == "v1"
    assert "swapped" not in [s[0] for s in steps(upstream, version)]
    detail = refused[0][2]
    expect = {"truncated": "truncated", "wrong_hash": "wrong hash", "unsigned": "unsigned",
              "other_key": "bad signature", "wrong_shape": "shape", "worse_canary": "worse on the canary",
              "truncated_model_file": "does not load"}[case]
    assert expect in detail, detail
    assert not (Path(node.room.data_dir) / "models" / "active.json").exists()
    node.store.flush()
    assert node.store.query("SELECT status FROM models WHERE version = ?", (version,)) == [{"status": "refused"}]


def test_snapshots_travel_the_same_signed_path(node: Any, mosquitto: Any, upstream: Any,
                                                keys: Any, tmp_path: Path, publish: Any) -> None:
    snap = tmp_path / "catalogue.json"
    snap.write_text(json.dumps({"products": [{"sku": f"new-{i}", "name": f"New product {i}", "department": "DELI",
                                              "price": 1.5 + i} for i in range(50)]}))
    rel = build_release("catalogue", snap, "cat-7", keys.private)
    publish(rel)
    upstream.wait_step("cat-7", "applied")
    assert node.store.product("new-3") is not None and node.store.product("new-3").price == 4.5  # type: ignore[union-attr]
    # an unsigned stock snapshot is refused and changes nothing
    stock = tmp_path / "stock.json"
    stock.write_text(json.dumps({"levels": {"new-3": 0}}))
    publish(build_release("stock", stock, "stock-1", None))
    upstream.wait_step("stock-1", "refused")
    assert node.store.stock("new-3") is None


def test_swap_drops_no_request_and_a_model_failing_after_the_swap_is_rolled_back(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, fakes: Any, tmp_path: Path, publish: Any) -> None:
    import threading
    import time as _time

    from edge.recommend import VisitState

    stop = threading.Event()
    answered: list[str] = []
    failures: list[BaseException] = []

    def hammer() -> None:  # what the recommender does: read the reference, score
        visit = VisitState("s", zone="dairy", picked=["sku-3"])
        while not stop.is_set():
            model = node.rec.model
            try:
                out = model.score(visit, None, 5, set())
                assert out
                answered.append(model.version)
            except BaseException as exc:
                failures.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        publish(build_release("model", fakes.write_model(tmp_path / "v2", "v2"), None, keys.private))
        upstream.wait_step("v2", "swapped")
        _time.sleep(0.2)
    finally:
        stop.set()
        t.join(5)
    assert not failures and "v1" in answered and answered[-1] == "v2"
    # a model that passes the canary but then fails in service is rolled back automatically
    publish(build_release("model", fakes.write_model(tmp_path / "v3", "v3", quality="breaks_after_canary"),
                                     None, keys.private))
    upstream.wait_step("v3", "swapped")
    visit = VisitState("s", zone="dairy", picked=["sku-3"])
    for _ in range(20):
        try:
            node.rec.model.score(visit, None, 5, set())
        except RuntimeError:
            pass
    rolled = upstream.wait_step("v3", "rolled_back")
    assert "automatic" in rolled[0][2]
    assert node.rec.model.version == "v2"


def test_a_stalled_staging_is_reported_with_the_missing_chunks(node: Any, mosquitto: Any, upstream: Any,
                                                               steps: Any, keys: Any, fakes: Any,
                                                               tmp_path: Path, publish: Any) -> None:
    rel = build_release("model", fakes.write_model(tmp_path / "v4", "v4"), None, keys.private, chunk_size=64 * 1024)
    chunks = rel.chunks()
    publish(rel, chunks=chunks[:2])  # the link dropped before the rest
    upstream.wait_step("v4", "staging")
    assert node.room.releases.check_stalled(after_s=0.0)
    stalled = upstream.wait_for(lambda: [s for s in steps(upstream, "v4") if s[0] == "staging" and not s[1]])
    assert stalled and "missing 2, 3" in stalled[0][2], steps(upstream, "v4")
    assert node.rec.model.version == "v1"
    assert not node.room.releases.check_stalled(after_s=0.0)  # not again within the hour
