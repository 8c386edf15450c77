"""Model releases do not pile up on the card: after each activation (and at start) only the release directories
``models/active.json`` names stay (the serving one and the previous, for ``rollback``), over a real Mosquitto
with real Ed25519 signatures. ``rollback`` still works after pruning; a ``.tmp`` left by a ``kill -9`` of a real
node process mid-unpack is gone at the next start; a prune that fails (a real EBUSY) does not stop the
activation; a directory the node did not unpack stays."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from edge.sync.publish import build_release
from edge.sync.topics import Topics

HERE = Path(__file__).parent
TOPICS = Topics("shelfcast/v1", "s1", "node-1")


def created(n: int) -> str:
    return f"2026-12-01T{n:02d}:00:00+00:00"


def model_dir(fakes: Any, tmp: Path, n: int, **kw: Any) -> Path:
    """Fake model release ``2026.12.01-v<n>`` whose manifest's created orders it after v<n-1>."""
    version = f"2026.12.01-v{n}"
    d = fakes.write_model(tmp / "src" / version, version, **kw)
    man = json.loads((d / "manifest.json").read_text())
    man["created"] = created(n)
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def release(fakes: Any, keys: Any, tmp: Path, n: int) -> Any:
    return build_release("model", model_dir(fakes, tmp, n), None, keys.private)


def listing(models: Path) -> set[str]:
    return {p.name for p in models.iterdir()} if models.is_dir() else set()


def pointer(models: Path) -> dict[str, Any]:
    return json.loads((models / "active.json").read_text())  # type: ignore[no-any-return]


def send_cmd(mosquitto: Any, obj: dict[str, Any]) -> None:
    import paho.mqtt.publish as pub

    pub.single(TOPICS.cmd(), json.dumps(obj).encode(), qos=1, hostname="127.0.0.1", port=mosquitto.port,
               protocol=5)


def prune_lines(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.sync.prune" and r.levelno == logging.INFO]


def test_after_six_releases_only_the_two_named_dirs_remain_and_rollback_still_works(
        node: Any, mosquitto: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path,
        caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="edge.sync.prune")
    models = Path(node.room.data_dir) / "models"
    for n in range(1, 7):
        publish(release(fakes, keys, tmp_path, n))
        upstream.wait_step(f"2026.12.01-v{n}", "swapped")
        node.room.releases.wait_idle()  # the prune runs on the release worker right after the swap
    assert node.rec.model.version == "2026.12.01-v6"
    assert listing(models) == {"active.json", "2026.12.01-v6", "2026.12.01-v5"}, listing(models)
    p = pointer(models)
    assert (p["version"], p["previous"]["version"]) == ("2026.12.01-v6", "2026.12.01-v5")
    lines = prune_lines(caplog)
    assert any("2026.12.01-v1" in line and "MB freed" in line for line in lines), lines
    # rollback after pruning: back to v5, from its directory (still loadable, still intact)
    send_cmd(mosquitto, {"id": "rb1", "command": "rollback"})
    res = upstream.wait_for(lambda: [r for r in upstream.of("/cmd/result") if r.get("cmd") == "rb1"])
    assert res and res[0]["ok"], res
    assert upstream.wait_for(lambda: node.rec.model.version == "2026.12.01-v5")
    p = pointer(models)
    assert (p["version"], p["previous"]["version"]) == ("2026.12.01-v5", "2026.12.01-v6")
    assert listing(models) == {"active.json", "2026.12.01-v6", "2026.12.01-v5"}
    # the next release follows the serving v5: v6 (rolled back from) is the one that goes
    publish(release(fakes, keys, tmp_path, 7))
    upstream.wait_step("2026.12.01-v7", "swapped")
    node.room.releases.wait_idle()
    assert listing(models) == {"active.json", "2026.12.01-v7", "2026.12.01-v5"}, listing(models)
    send_cmd(mosquitto, {"id": "rb2", "command": "rollback"})
    assert upstream.wait_for(lambda: node.rec.model.version == "2026.12.01-v5")


def test_a_tmp_left_by_a_refused_archive_goes_at_the_next_activation(
        node: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    models = Path(node.room.data_dir) / "models"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("model.tflite")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    publish(build_release("model", buf.getvalue(), "2026.12.01-v1", keys.private, fmt="tar"))
    detail = upstream.wait_step("2026.12.01-v1", "refused")[-1][2]
    assert "non-file entry" in detail, detail
    # a refused archive's unpack dir is removed at once now (before 2026-12-01 it stayed until the next activation)
    assert ".2026.12.01-v1.tmp" not in listing(models), listing(models)
    publish(release(fakes, keys, tmp_path, 2))
    upstream.wait_step("2026.12.01-v2", "swapped")
    node.room.releases.wait_idle()
    assert listing(models) == {"active.json", "2026.12.01-v2"}, listing(models)


@pytest.fixture
def busy_mount(tmp_path: Path) -> Any:
    """Mount a real tmpfs at a path (an OS-level EBUSY for whoever removes the directory holding it)."""
    if os.geteuid() != 0:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("mounting a tmpfs needs root: run this test as root")
        pytest.skip("mounting a tmpfs needs root")
    def mount(at: Path) -> None:
        at.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(at)], check=True)

    def umount_all() -> None:  # wherever the mount points are now (a rename moves them)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            at = line.split()[1].replace("\\040", " ")
            if at.startswith(str(tmp_path) + "/"):
                subprocess.run(["umount", "-l", at], check=False)

    mount.umount_all = umount_all  # type: ignore[attr-defined]
    try:
        yield mount
    finally:
        umount_all()


def test_a_prune_error_does_not_stop_the_activation(
        node: Any, upstream: Any, publish: Any, keys: Any, fakes: Any, tmp_path: Path, caplog: Any,
        busy_mount: Any) -> None:
    caplog.set_level(logging.INFO, logger="edge.sync.prune")
    models = Path(node.room.data_dir) / "models"
    for n in (1, 2):
        publish(release(fakes, keys, tmp_path, n))
        upstream.wait_step(f"2026.12.01-v{n}", "swapped")
    node.room.releases.wait_idle()
    busy_mount(models / "2026.12.01-v1" / "held")  # v1 cannot be removed whole: rmdir of a mount point is EBUSY
    publish(release(fakes, keys, tmp_path, 3))
    upstream.wait_step("2026.12.01-v3", "swapped")
    node.room.releases.wait_idle()
    assert node.rec.model.version == "2026.12.01-v3"  # activated, whatever the prune met
    assert pointer(models)["version"] == "2026.12.01-v3"
    warnings = [r.getMessage() for r in caplog.records if r.name == "edge.sync.prune" and r.levelno == logging.WARNING]
    assert any("2026.12.01-v1" in w and "could not remove" in w and "rm -rf" in w for w in warnings), warnings
    assert not [s for s in upstream.of("/release/status") if s["version"] == "2026.12.01-v3" and not s["ok"]]
    # once the cause is gone, the next activation finishes the removal
    busy_mount.umount_all()
    publish(release(fakes, keys, tmp_path, 4))
    upstream.wait_step("2026.12.01-v4", "swapped")
    node.room.releases.wait_idle()
    assert listing(models) == {"active.json", "2026.12.01-v4", "2026.12.01-v3"}, listing(models)


# -- a real node process killed (-9) mid-unpack ------------------------------------------------------------------
LAUNCHER = """
import runpy, sys, time
from pathlib import Path
import edge.sync.release as r

mode, flag, harness = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
if mode == "pause-unpack":  # stop inside the unpack: files extracted into models/.<version>.tmp, not renamed
    orig = r._tree_digest
    def digest(root):
        if root.name.endswith(".tmp"):
            flag.write_text(str(root))
            time.sleep(3600)
        return orig(root)
    r._tree_digest = digest
elif mode == "hold-releases":  # a resumed release waits until the flag file exists (the start is observed first)
    orig_assemble = r.ReleaseManager._assemble
    def assemble(self, d, m):
        while not flag.exists():
            time.sleep(0.02)
        return orig_assemble(self, d, m)
    r.ReleaseManager._assemble = assemble
sys.argv = [harness] + sys.argv[4:]
runpy.run_path(harness, run_name="__main__")
"""


def start_node_process(config: Any, tmp: Path, st: Path, mode: str, flag: Path) -> subprocess.Popen[bytes]:
    cfg = tmp / "node-config.json"
    cfg.write_text(config.model_dump_json(by_alias=True))
    launcher = tmp / "launcher.py"
    launcher.write_text(LAUNCHER)
    st.unlink(missing_ok=True)
    return subprocess.Popen([sys.executable, str(launcher), mode, str(flag), str(HERE / "node_harness.py"),
                             str(cfg), "--status", str(st), "--fake-model"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(HERE.parents[2]))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_tmp_left_by_kill9_mid_unpack_is_gone_at_the_next_start(
        mosquitto: Any, node_config: Any, keys: Any, fakes: Any, upstream: Any, publish: Any,
        tmp_path: Path, harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    models = Path(config.node.data_dir) / "models"
    st, paused, go = tmp_path / "status.json", tmp_path / "paused", tmp_path / "go"
    proc = start_node_process(config, tmp_path, st, "pause-unpack", paused)
    try:
        harness.wait_status(st, proc, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1")
        publish(release(fakes, keys, tmp_path, 1))
        deadline = time.monotonic() + 30
        while not paused.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert paused.exists(), "the node never reached the unpack"
        proc.send_signal(signal.SIGKILL)  # a power cut mid-unpack
        proc.wait(10)
    finally:
        stop(proc, signal.SIGKILL)
    tmp_dir = models / ".2026.12.01-v1.tmp"
    assert (tmp_dir / "model.tflite").is_file(), listing(models)  # the half-done unpack, as the kill left it
    # restart: the staged release resumes, held back until the start has been looked at
    proc = start_node_process(config, tmp_path, st, "hold-releases", go)
    try:
        harness.wait_status(st, proc, lambda s: s["connected"], 30, "node up again")
        assert not tmp_dir.exists(), listing(models)  # gone at start, before any release is handled
        go.write_text("go")
        harness.wait_status(st, proc, lambda s: s["model"] == "2026.12.01-v1", 30, "the resumed v1 to swap in")
        assert listing(models) == {"active.json", "2026.12.01-v1"}, listing(models)
    finally:
        stop(proc)


# -- the prune on its own (real directories) -------------------------------------------------------------------
def _release_dir(models: Path, name: str) -> Path:
    d = models / name
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(b"x" * 1000)
    (d / "files.json").write_text(json.dumps({"version": name, "files": {"model.tflite": "0"}}))
    return d


def test_prune_keeps_what_the_pointer_names_and_what_the_node_did_not_unpack(tmp_path: Path) -> None:
    from edge.sync.prune import prune_models

    models = tmp_path / "models"
    for name in ("a", "b", "c", "d"):
        _release_dir(models, name)
    (models / "custom").mkdir()  # a model a technician put there (model.path): no files.json
    (models / "custom" / "model.tflite").write_bytes(b"m")
    (models / "active.json").write_text(json.dumps({"version": "d", "path": str(models / "d"),
                                                    "previous": {"version": "c", "path": str(models / "c")}}))
    res = prune_models(models, keep=[models / "a" / "model.tflite"])
    assert sorted(res.removed) == ["b"] and res.freed > 1000 and not res.failed, res
    assert listing(models) == {"a", "c", "d", "custom", "active.json"}
    # an unreadable pointer: no release directory goes (what serves is not known), a leftover unpack does
    (models / "active.json").write_text("{not json")
    (models / ".e.tmp").mkdir()
    res = prune_models(models)
    assert res.removed == [] and res.leftovers == [".e.tmp"] and "unreadable" in res.skipped, res
    assert listing(models) == {"a", "c", "d", "custom", "active.json"}
    # no pointer: the bundled model serves; every release directory goes, the technician's stays
    (models / "active.json").unlink()
    res = prune_models(models)
    assert sorted(res.removed) == ["a", "c", "d"], res
    assert listing(models) == {"custom"}
    assert prune_models(tmp_path / "missing").removed == []  # no models dir yet: nothing to do, no error
