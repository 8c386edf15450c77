"""Installing a release never holds it in RAM: a real node process (``node_harness.py``, real Mosquitto, real
Ed25519 keys) installs a 100 MB model release and its peak RSS (``/proc/<pid>/status`` VmHWM) grows by about a
chunk, not by the release; ``kill -9`` in the middle of unpacking it from its chunks leaves the old model serving
and the release is installed after the restart; on disk it takes its chunks and its unpacked copy, no third copy,
and the room check at the announcement counts just that. Big files go to ``tmp_path`` (on disk, not tmpfs) and
are removed at the end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.sync.link import LinkSettings
from edge.sync.publish import build_release, publish_release
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")
MB = 1 << 20


@pytest.fixture
def big_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "big"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def big_model_dir(fakes: Any, d: Path, version: str, size_mb: int) -> tuple[Path, str]:
    """A model release directory: the fake ``model.tflite`` (about 300 KB, what the loader reads), its
    ``manifest.json`` with a ``created``, and ``weights.bin`` of ``size_mb`` MB of random bytes (what makes the
    release big; tar does not compress it). Returns the dir and the sha256 of weights.bin."""
    fakes.write_model(d, version)
    (d / "manifest.json").write_text(json.dumps({"version": version, "created": "2026-12-01T10:00:00+00:00"}))
    h = hashlib.sha256()
    with open(d / "weights.bin", "wb") as f:
        for _ in range(size_mb):
            block = os.urandom(MB)
            h.update(block)
            f.write(block)
    return d, h.hexdigest()


def watch(harness: Any, st: Path, proc: subprocess.Popen[bytes], pred: Any, timeout: float,
          what: str) -> dict[str, Any]:
    """Poll the node's status until ``pred``; every status it reports must be a model that answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the node exited ({proc.returncode}) waiting for {what}"
        s = harness.status(st)
        if s.get("pid") == proc.pid:
            assert s["answers"] and s["model"] in ("v1", "v2"), s
            if pred(s):
                return s
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last status {harness.status(st)}")


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def publish(mosquitto: Any, rel: Any) -> None:
    publish_release(LinkSettings(url=mosquitto.url, client_id=f"pub-{time.monotonic_ns()}"), TOPICS, rel,
                    timeout=120)


@pytest.mark.slow
def test_installing_a_100mb_model_release_grows_peak_rss_by_less_than_32mb(
        mosquitto: Any, node_config: Any, keys: Any, fakes: Any, tmp_path: Path, big_dir: Path,
        harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    st = tmp_path / "status.json"
    src, weights = big_model_dir(fakes, big_dir / "v2", "v2", 100)
    rel = build_release("model", src, "v2", keys.private)
    assert rel.manifest["size"] > 100 * MB and rel.manifest["format"] == "tar"
    node = harness.start(config, tmp_path, st)
    try:
        watch(harness, st, node, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1")
        time.sleep(1.0)
        before = vm_hwm(node.pid)
        publish(mosquitto, rel)
        del rel
        watch(harness, st, node, lambda s: s["model"] == "v2", 240, "the 100 MB release to be installed")
        grew = vm_hwm(node.pid) - before
    finally:
        stop(node)
    installed = Path(config.node.data_dir) / "models" / "v2"
    with open(installed / "weights.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == weights  # installed whole
    assert not (Path(config.node.data_dir) / "sync" / "staging" / "model" / "v2").exists()
    print(f"VmHWM grew {grew / MB:.1f} MB installing a {100} MB release")
    assert grew < 32 * MB, f"peak RSS grew {grew / MB:.0f} MB installing a 100 MB release (the release was in RAM)"


@pytest.mark.slow
def test_kill9_while_unpacking_from_the_chunks_leaves_the_old_model_serving_and_installs_after_restart(
        mosquitto: Any, node_config: Any, keys: Any, fakes: Any, tmp_path: Path, big_dir: Path,
        harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    st = tmp_path / "status.json"
    src, weights = big_model_dir(fakes, big_dir / "v2", "v2", 60)
    rel = build_release("model", src, "v2", keys.private)
    staging = Path(config.node.data_dir) / "sync" / "staging" / "model" / "v2"
    part = Path(config.node.data_dir) / "models" / ".v2.tmp" / "weights.bin"  # unpacked straight from the chunks
    node = harness.start(config, tmp_path, st)
    try:
        watch(harness, st, node, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1")
        publish(mosquitto, rel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 0):
            assert harness.status(st).get("model") == "v1", "installed before the kill could land mid-unpack"
            time.sleep(0.005)
        assert part.exists(), "the node never unpacked the release"
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        assert 0 < part.stat().st_size < 60 * MB, "the kill did not land mid-unpack"
        assert len(list(staging.glob("*.chunk"))) == rel.manifest["chunks"]  # the staging stays, to resume
        assert not (staging / "release.assembled").exists()  # never joined into a third copy
        assert not (Path(config.node.data_dir) / "models" / "active.json").exists()
        node = harness.start(config, tmp_path, st)
        first = watch(harness, st, node, lambda s: True, 30, "restart")
        assert first["model"] == "v1"  # the old model serves while the release is read again
        watch(harness, st, node, lambda s: s["model"] == "v2", 120, "v2 to be installed after the restart")
    finally:
        stop(node)
    with open(Path(config.node.data_dir) / "models" / "v2" / "weights.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == weights
    assert not staging.exists()
    pointer = json.loads((Path(config.node.data_dir) / "models" / "active.json").read_text())
    assert pointer["version"] == "v2"


def tiny_manager(disk: Path, keys: Any, fakes: Any, reports: list[Any]) -> Any:
    from edge.sync.release import ReleaseManager

    serving: list[Any] = [fakes.FakeScorer("v1")]
    return ReleaseManager(disk, public_key=keys.public_path, loader=fakes.load, get_model=lambda: serving[-1],
                          set_model=serving.append, report=lambda *a: reports.append(a), reserve_bytes=0)


def test_a_model_tar_takes_its_chunks_and_its_unpacked_copy_on_disk_not_three_copies(
        tmp_path: Path, keys: Any, fakes: Any, tiny_disk: Path) -> None:
    """On a real 2 MB tmpfs: a 0.8 MB model tar is unpacked straight from its staged chunks, so installing it
    takes 1.6 MB (chunks + unpacked copy), which fits. Before, the chunks were first joined into one more file
    (2.4 MB in all): refused at its announcement ("no room"), and let through, ENOSPC half-way."""
    reports: list[tuple[str, str, str, bool, str]] = []
    rm = tiny_manager(tiny_disk, keys, fakes, reports)
    try:
        d = fakes.write_model(tmp_path / "v2", "v2")
        weights = os.urandom(500_000)
        (d / "weights.bin").write_bytes(weights)
        rel = build_release("model", d, "v2", keys.private)
        size = rel.manifest["size"]
        free = shutil.disk_usage(tiny_disk).free
        assert 2 * size < free < 3 * size, (size, free)  # chunks + unpacked fit; + an assembled file does not
        rm.on_manifest("model", json.dumps(rel.manifest).encode(), source=TOPICS.release_manifest("model"))
        for i, chunk in enumerate(rel.iter_chunks()):
            rm.on_chunk("model", i, chunk)
        rm.wait_idle()
        assert [r[2] for r in reports][-1] == "swapped", reports
        assert (tiny_disk / "models" / "v2" / "weights.bin").read_bytes() == weights
        assert not (tiny_disk / "sync" / "staging" / "model" / "v2").exists()  # the chunks are gone after
    finally:
        rm.close()


def test_the_room_check_at_the_announcement_counts_the_chunks_and_the_unpacked_copy(
        tmp_path: Path, keys: Any, fakes: Any, tiny_disk: Path) -> None:
    """On a real 2 MB tmpfs: a 1.1 MB model tar needs 2.2 MB (its chunks and its unpacked copy): refused at its
    announcement, saying how much it needs and why, not failed half-way."""
    reports: list[tuple[str, str, str, bool, str]] = []
    rm = tiny_manager(tiny_disk, keys, fakes, reports)
    try:
        d = fakes.write_model(tmp_path / "v2", "v2")
        (d / "weights.bin").write_bytes(os.urandom(800_000))
        rel = build_release("model", d, "v2", keys.private)
        size = rel.manifest["size"]
        free = shutil.disk_usage(tiny_disk).free
        assert size < free < 2 * size, (size, free)
        rm.on_manifest("model", json.dumps(rel.manifest).encode(), source=TOPICS.release_manifest("model"))
        refused = [r for r in reports if r[2] == "refused"]
        assert refused and "no room" in refused[0][4] and "as much again to install the model" in refused[0][4], \
            reports
        assert not (tiny_disk / "sync" / "staging" / "model" / "v2").exists()
    finally:
        rm.close()


PUBLISHER = """
import sys, time
from pathlib import Path
from edge.sync.link import LinkSettings
from edge.sync.publish import build_release, load_private_key, publish_release
from edge.sync.topics import Topics

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

rel = build_release("model", Path(sys.argv[1]), "v2", load_private_key(Path(sys.argv[2])))
before = hwm()
publish_release(LinkSettings(url=sys.argv[3], client_id="pub-mem"), Topics("shelfcast/v1", "s1", "node-1"), rel,
                timeout=120)
print(before, hwm())
"""


@pytest.mark.slow
def test_publishing_a_100mb_release_does_not_hold_its_chunks_in_ram(
        mosquitto: Any, keys: Any, fakes: Any, big_dir: Path) -> None:
    """The publisher (``shelfcast model publish``) holds the release once, not its chunks as well: paho keeps
    every message until its PUBACK, so at most a window of chunks waits for one."""
    src, _ = big_model_dir(fakes, big_dir / "v2", "v2", 100)
    out = subprocess.run([sys.executable, "-c", PUBLISHER, str(src), str(keys.private_path), mosquitto.url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = (int(x) for x in out.stdout.split())
    print(f"publisher VmHWM grew {(after - before) / MB:.1f} MB publishing a 100 MB release")
    assert after - before < 32 * MB, f"the publisher's peak RSS grew {(after - before) / MB:.0f} MB publishing " \
                                     "a 100 MB release (its chunks were all in RAM)"
