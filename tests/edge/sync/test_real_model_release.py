"""The release path with the real int8 TFLite model (models/shipped) and the real loader (edge.ranking):
a re-published model swaps in; one whose manifest promises other input shapes is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.sync.link import LinkSettings
from edge.sync.publish import build_release, publish_release
from edge.sync.room import default_loader
from edge.sync.topics import Topics

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shipped"
TOPICS = Topics("shelfcast/v1", "s1", "node-1")

pytestmark = pytest.mark.skipif(not (SHIPPED / "model.tflite").exists(), reason="models/shipped not built")


def package(tmp: Path, version: str, *, session_shape: list[int] | None = None) -> Path:
    d = tmp / version
    shutil.copytree(SHIPPED, d)
    man = json.loads((d / "manifest.json").read_text())
    man["version"] = version
    if session_shape is not None:
        for inp in man["feature_spec"]["inputs"]:
            if inp["name"] == "session_items":
                inp["shape"] = session_shape
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def test_real_model_release_swaps_and_wrong_shapes_are_refused(mosquitto: Any, node_config: Any, keys: Any,
                                                               start_node: Any, upstream: Any, steps: Any,
                                                               tmp_path: Path) -> None:
    cfg = node_config(mosquitto.url, public_key=keys.public_path)
    loader = default_loader(cfg)
    assert loader is not None
    try:
        current = loader(SHIPPED)
    except Exception as exc:  # models/ and edge/ranking move together; the release path is tested with fakes too
        pytest.skip(f"the shipped model does not load with this edge.ranking: {exc}")
    node = start_node(cfg, model=current, loader=loader)
    from edge.app import bundled_catalogue

    node.store.upsert_products(bundled_catalogue()).result(10)  # the canary's cold-start requests come from it
    settings = LinkSettings(url=mosquitto.url, client_id="pub")
    publish_release(settings, TOPICS, build_release("model", package(tmp_path, "real-2"), None, keys.private))
    assert upstream.wait_for(lambda: [s for s in steps(upstream, "real-2") if s[0] == "swapped"], 60), \
        steps(upstream, "real-2")
    assert node.rec.model.version == "real-2"
    canary = next(s for s in steps(upstream, "real-2") if s[0] == "canary")
    assert canary[1] and "answered" in canary[2]
    bad = build_release("model", package(tmp_path, "real-3", session_shape=[1, 8]), None, keys.private)
    publish_release(settings, TOPICS, bad)
    refused = upstream.wait_for(lambda: [s for s in steps(upstream, "real-3") if s[0] == "refused"], 60)
    assert refused and "shape" in refused[0][2], steps(upstream, "real-3")
    assert node.rec.model.version == "real-2"
