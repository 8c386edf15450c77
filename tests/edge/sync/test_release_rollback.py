"""Anti-rollback: a correctly signed but older release (last month's retained one, or one captured off the wire
and re-published) is refused, over a real Mosquitto with real Ed25519 signatures; the serving model stays. The
mark survives a kill -9 of a real node process; the `rollback` command still works and is not blocked; a newer
release after a rollback is accepted; the cloud rolls back on purpose with a newer release of the old weights
(`shelfcast model publish --version`, which re-stamps the model's created). The real int8 model is refused when
older than the bundled one."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edge.sync.publish import build_release
from edge.sync.topics import Topics

HERE = Path(__file__).parent
SHIPPED = HERE.parents[2] / "models" / "shipped"
TOPICS = Topics("shelfcast/v1", "s1", "node-1")
NOV30 = "2026-11-30T19:28:55+00:00"
OCT01 = "2026-10-01T08:00:00+00:00"


def model_dir(fakes: Any, tmp: Path, version: str, created: str | None, **kw: Any) -> Path:
    """A fake model directory whose manifest.json carries ``created`` as ``models.export`` writes it."""
    n = 0
    while (tmp / f"{version}-{n}").exists():
        n += 1
    d = fakes.write_model(tmp / f"{version}-{n}", version, **kw)
    man = json.loads((d / "manifest.json").read_text())
    if created is not None:
        man["created"] = created
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def mosquitto_cmd(mosquitto: Any, obj: dict[str, Any]) -> None:
    import paho.mqtt.publish as pub

    pub.single(TOPICS.cmd(), json.dumps(obj).encode(), qos=1, hostname="127.0.0.1", port=mosquitto.port,
               protocol=5)


def test_an_older_signed_model_release_is_refused_and_the_serving_model_stays(
        node: Any, mosquitto: Any, upstream: Any, publish: Any,
        steps: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                     keys.private))
    upstream.wait_step("2026.11.30-v5", "swapped")
    # last month's release, correctly signed, never seen by this node (captured and re-published by anyone)
    publish(build_release("model", model_dir(fakes, tmp_path, "2026.10.01", OCT01), None, keys.private))
    detail = upstream.wait_step("2026.10.01", "refused")[-1][2]
    assert f"release 2026.10.01 (created {OCT01}) is older than the serving 2026.11.30-v5 (created {NOV30})" \
        in detail, detail
    assert "rollback" in detail and "--version" in detail, detail  # names both ways to roll back on purpose
    assert "verified" in [s[0] for s in steps(upstream, "2026.10.01")]  # the signature was fine
    assert "swapped" not in [s[0] for s in steps(upstream, "2026.10.01")]
    assert node.rec.model.version == "2026.11.30-v5"
    pointer = json.loads((Path(node.room.data_dir) / "models" / "active.json").read_text())
    assert pointer["version"] == "2026.11.30-v5"
    assert node.room.releases.health()["older_refused"] == 1
    node.store.flush()
    assert node.store.query("SELECT status FROM models WHERE version = ?", ("2026.10.01",)) == [{"status": "refused"}]
    # a newer build published under the same version (another sha256) is refused: a version names one release
    publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", "2026-12-01T00:00:00+00:00",
                                                        quality="bad"), None, keys.private))
    node.room.releases.wait_idle()
    refusals = upstream.wait_for(lambda: [s for s in steps(upstream, "2026.11.30-v5") if s[0] == "refused"])
    assert refusals and "a version names one release" in refusals[-1][2], steps(upstream, "2026.11.30-v5")
    assert node.rec.model.quality == "good"


def test_an_older_snapshot_is_refused_and_the_store_keeps_the_newer_one(
        node: Any, mosquitto: Any, upstream: Any, publish: Any, steps: Any, keys: Any, tmp_path: Path) -> None:
    def catalogue(name: str, price: float) -> Path:
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"products": [{"sku": "sku-1", "name": name, "price": price}]}))
        return f

    publish(build_release("catalogue", catalogue("new", 2.0), "2026.11.30-090000", keys.private))
    upstream.wait_step("2026.11.30-090000", "applied")
    publish(build_release("catalogue", catalogue("old", 9.0), "2026.11.01-090000", keys.private))
    detail = upstream.wait_step("2026.11.01-090000", "refused")[-1][2]
    assert "older than" in detail and "--kind catalogue" in detail, detail
    # the old default version (a hash of the content) has no order: refused once the kind has a mark
    hashed = build_release("catalogue", catalogue("hashed", 7.0), None, keys.private)
    publish(hashed)
    detail = upstream.wait_step(hashed.manifest["version"], "refused")[-1][2]
    assert "date-stamped --version" in detail, detail
    node.store.flush()
    product = node.store.product("sku-1")
    assert product is not None and product.name == "new" and product.price == 2.0
    # a newer one is applied; natural order: 2026.11.30-090000 < 2026.12.01-000000
    publish(build_release("catalogue", catalogue("newer", 3.0), "2026.12.01-000000", keys.private))
    upstream.wait_step("2026.12.01-000000", "applied")
    assert node.store.product("sku-1").name == "newer"  # type: ignore[union-attr]


def test_the_mark_survives_kill9_the_rollback_command_works_and_a_newer_release_follows(
        mosquitto: Any, node_config: Any, keys: Any, fakes: Any, upstream: Any, publish: Any,
        steps: Any, tmp_path: Path, harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    st = tmp_path / "status.json"

    def wait(proc: Any, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        """``harness.wait_status``, and the status it returns is checked here too: each step below must really
        have happened (a wait that returned early would let a later step pass on the wrong model)."""
        s = harness.wait_status(st, proc, pred, timeout, what)
        assert pred(s) and s["answers"], f"waiting for {what}: got {s}"
        return s  # type: ignore[no-any-return]

    proc = harness.start(config, tmp_path, st)
    try:
        wait(proc, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1")
        publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                         keys.private))
        wait(proc, lambda s: s["model"] == "2026.11.30-v5", 30, "2026.11.30-v5 to swap in")
        # the local rollback (the `rollback` command) is not blocked by the mark: back to the bundled v1
        mosquitto_cmd(mosquitto, {"id": "rb1", "command": "rollback"})
        res = upstream.wait_for(lambda: [r for r in upstream.of("/cmd/result") if r.get("cmd") == "rb1"])
        assert res and res[0]["ok"], res
        wait(proc, lambda s: s["model"] == "v1", 10, "the rollback to v1")
        proc.send_signal(signal.SIGKILL)  # a power cut right after: no clean shutdown
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not (Path(config.node.data_dir) / "models" / "active.json").exists()  # no pointer: the bundled model
    marks = json.loads((Path(config.node.data_dir) / "sync" / "release_marks.json").read_text())
    assert marks["model"]["version"] == "2026.11.30-v5" and marks["model"]["created_text"] == NOV30
    proc = harness.start(config, tmp_path, st)
    try:
        wait(proc, lambda s: s["connected"] and s["model"] == "v1", 30, "the restart on v1")
        # serving v1 now (older than the mark): last month's signed release is still refused
        publish(build_release("model", model_dir(fakes, tmp_path, "2026.10.01", OCT01), None,
                                         keys.private))
        detail = upstream.wait_step("2026.10.01", "refused", 30)[-1][2]
        assert "older than the newest accepted 2026.11.30-v5" in detail, detail
        wait(proc, lambda s: s["model"] == "v1", 5, "v1 still serving")
        # a newer release after the rollback is accepted
        publish(build_release("model", model_dir(fakes, tmp_path, "2026.12.02", "2026-12-02T06:00:00Z"),
                                         None, keys.private))
        wait(proc, lambda s: s["model"] == "2026.12.02", 30, "2026.12.02 to swap in")
        assert json.loads(st.read_text())["model"] == "2026.12.02"  # and still serving it just before the stop
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert json.loads((Path(config.node.data_dir) / "sync" / "release_marks.json").read_text())["model"][
        "version"] == "2026.12.02"


def test_the_cloud_rolls_back_with_a_newer_release_of_the_old_model(
        node: Any, mosquitto: Any, upstream: Any, publish: Any, steps: Any, keys: Any, fakes: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    old = model_dir(fakes, tmp_path, "2026.10.01", OCT01)
    publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                     keys.private))
    upstream.wait_step("2026.11.30-v5", "swapped")
    capsys.readouterr()
    code = main(["model", "publish", "--broker", mosquitto.url, "--store", "s1", "--node", "node-1",
                 "--model", str(old), "--sign-key", str(keys.private_path), "--version", "2026.12.01-rollback"])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert res["version"] == "2026.12.01-rollback" and res["restamped_from"] == {"version": "2026.10.01",
                                                                                "created": OCT01}
    upstream.wait_step("2026.12.01-rollback", "swapped")
    assert node.rec.model.version == "2026.10.01"  # the old weights serve again (the fake names its file's version)
    installed = json.loads((Path(node.room.data_dir) / "models" / "2026.12.01-rollback" / "manifest.json")
                           .read_text())
    assert installed["version"] == "2026.12.01-rollback" and installed["created"] > NOV30
    assert json.loads((old / "manifest.json").read_text())["created"] == OCT01  # the source is left alone


@pytest.mark.skipif(not (SHIPPED / "model.tflite").exists(), reason="models/shipped not built")
def test_the_real_model_older_than_the_bundled_one_is_refused(mosquitto: Any, node_config: Any, keys: Any,
                                                             start_node: Any, upstream: Any, publish: Any, steps: Any,
                                                             tmp_path: Path) -> None:
    from edge.sync.room import default_loader

    cfg = node_config(mosquitto.url, public_key=keys.public_path)
    loader = default_loader(cfg)
    assert loader is not None
    bundled = loader(SHIPPED)
    node = start_node(cfg, model=bundled, loader=loader)
    shipped = json.loads((SHIPPED / "manifest.json").read_text())
    d = tmp_path / "old"
    shutil.copytree(SHIPPED, d)
    man = dict(shipped, version="2026.10.01", created=OCT01)
    (d / "manifest.json").write_text(json.dumps(man))
    publish(build_release("model", d, None, keys.private))
    detail = upstream.wait_step("2026.10.01", "refused", 60)[-1][2]
    assert f"older than the serving {shipped['version']} (created {shipped['created']})" in detail, detail
    assert node.rec.model is bundled
    assert not (Path(node.room.data_dir) / "models" / "2026.10.01").exists()


def test_a_rollback_to_the_bundled_model_written_by_older_code_still_serves_the_bundled_model(
        mosquitto: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, publish: Any,
        steps: Any, fakes: Any,
        tmp_path: Path) -> None:
    cfg = node_config(mosquitto.url, public_key=keys.public_path)
    node = start_node(cfg)
    publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                     keys.private))
    upstream.wait_step("2026.11.30-v5", "swapped")
    installed = Path(node.room.data_dir) / "models" / "2026.11.30-v5"
    node.close()
    node.close = lambda: None  # stopped here, not again by start_node's teardown
    # what a rollback to the bundled model wrote before 2026-12-01: the bundled model's path as "."
    (installed.parent / "active.json").write_text(json.dumps(
        {"version": "v1", "path": ".", "t": time.time(), "rolled_back": "2026.11.30-v5",
         "previous": {"version": "2026.11.30-v5", "path": str(installed)}}))
    again = start_node(cfg)
    assert again.rec.model.version == "v1"


def test_a_mark_that_cannot_be_saved_leaves_the_release_applied_and_says_why(
        node: Any, mosquitto: Any, upstream: Any, publish: Any,
        steps: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    """Old code: the swap happened, then the failing mark write reported the release 'failed' (and remembered it
    so) while it was serving."""
    marks = Path(node.room.data_dir) / "sync" / "release_marks.json"
    marks.unlink(missing_ok=True)
    marks.mkdir()  # the atomic write's rename onto it fails: an OSError as from a full or failing card
    try:
        publish(build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                         keys.private))
        upstream.wait_step("2026.11.30-v5", "swapped")
        detail = upstream.wait_step("2026.11.30-v5", "mark")[-1][2]
        assert "applied, but the anti-rollback mark could not be saved" in detail and "free some space" in detail
        assert "failed" not in [s[0] for s in steps(upstream, "2026.11.30-v5")]
        assert node.rec.model.version == "2026.11.30-v5"
        # in this run the mark holds all the same: last month's release is refused
        publish(build_release("model", model_dir(fakes, tmp_path, "2026.10.01", OCT01), None,
                                         keys.private))
        assert "older than" in upstream.wait_step("2026.10.01", "refused")[-1][2]
    finally:
        marks.rmdir()
