"""``kill -9`` of a real node process during chunk staging and during a model swap: it comes back
serving a complete model (old or new, never a broken one) and finishes the release."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.sync.link import LinkSettings
from edge.sync.publish import build_release, publish_release
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")


def watch(harness: Any, st: Path, proc: subprocess.Popen[bytes], pred: Any, timeout: float, what: str,
          seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Poll the node's status; every status it reports must be a complete, answering model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = harness.status(st)
        if s.get("pid") == proc.pid:
            seen.append(s)
            assert s["answers"] and s["model"] in ("v1", "v2", "v3"), s
            if pred(s):
                return s
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last status {harness.status(st)}")


def kill9(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(10)


@pytest.mark.slow
def test_kill9_during_chunk_staging_resumes_and_installs(mosquitto: Any, node_config: Any, keys: Any, fakes: Any,
                                                          tmp_path: Path, harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    st = tmp_path / "status.json"
    seen: list[dict[str, Any]] = []
    node = harness.start(config, tmp_path, st)
    watch(harness, st, node, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1", seen)
    rel = build_release("model", fakes.write_model(tmp_path / "v2", "v2"), None, keys.private, chunk_size=4096)
    assert rel.manifest["chunks"] > 60
    pub = threading.Thread(target=publish_release, args=(LinkSettings(url=mosquitto.url, client_id="pub"), TOPICS,
                                                         rel),
                           # manifest first: the node stages at the upload's pace (published chunks-first, it gets
                           # them all at once when the manifest comes last), so the kill lands mid-staging
                           kwargs={"chunk_interval_s": 0.05, "timeout": 60, "manifest_first": True})
    pub.start()
    staging = Path(config.node.data_dir) / "sync" / "staging" / "model" / "v2"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list(staging.glob("*.chunk"))) < 15:
        time.sleep(0.02)
    staged_before = len(list(staging.glob("*.chunk")))
    assert 15 <= staged_before < rel.manifest["chunks"]
    kill9(node)
    pub.join(60)
    assert len(list(staging.glob("*.chunk"))) >= staged_before  # what was staged stayed on disk
    node = harness.start(config, tmp_path, st)
    try:
        first = watch(harness, st, node, lambda s: True, 30, "restart", seen)
        assert first["model"] == "v1"  # the old model serves while the release completes
        watch(harness, st, node, lambda s: s["model"] == "v2", 30, "v2 to be installed after the restart", seen)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(20)
    assert json.loads((Path(config.node.data_dir) / "models" / "active.json").read_text())["version"] == "v2"


@pytest.mark.slow
def test_kill9_during_a_model_swap_never_leaves_a_broken_model(mosquitto: Any, node_config: Any, keys: Any,
                                                               fakes: Any, tmp_path: Path,
                                                               harness: Any) -> None:
    config = node_config(mosquitto.url, public_key=keys.public_path)
    st = tmp_path / "status.json"
    seen: list[dict[str, Any]] = []
    node = harness.start(config, tmp_path, st)
    watch(harness, st, node, lambda s: s["connected"] and s["model"] == "v1", 30, "node up on v1", seen)
    rel = build_release("model", fakes.write_model(tmp_path / "v3", "v3", load_delay_s=1.5), None, keys.private)
    publish_release(LinkSettings(url=mosquitto.url, client_id="pub"), TOPICS, rel)
    installed = Path(config.node.data_dir) / "models" / "v3"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not installed.exists():
        time.sleep(0.01)
    assert installed.exists()
    time.sleep(0.3)  # inside the (slow) load + canary, before the swap
    kill9(node)
    assert harness.status(st)["model"] == "v1"
    node = harness.start(config, tmp_path, st)
    try:
        watch(harness, st, node, lambda s: s["model"] == "v3", 40, "the interrupted release to finish", seen)
    finally:
        kill9(node)  # and once more, right after the swap
    node = harness.start(config, tmp_path, st)
    try:
        first = watch(harness, st, node, lambda s: True, 30, "restart", seen)
        assert first["model"] == "v3"  # active.json pointed at the new, complete model
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(20)
    # a damaged install is never served: corrupt v3 on disk, restart, the previous (v1) serves
    (installed / "model.tflite").write_bytes(b"{broken")
    node = harness.start(config, tmp_path, st)
    try:
        first = watch(harness, st, node, lambda s: True, 30, "restart on a damaged install", seen)
        assert first["model"] == "v1"
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(20)
