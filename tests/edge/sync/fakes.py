"""Small stand-ins for a model file and its loader, so release refusals can be tested without TFLite.

A fake "model.tflite" is a JSON document. The loader raises (as ``Ranker.load`` does) when the file
is truncated or its input shape is wrong; the scorer predicts the next item (``sku-N`` → ``sku-N+1``)
when it is "good" and never does when it is "bad", so the canary can tell them apart.
Loaded by path (``importlib``) from the tests and the node harness.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FAKE_TAG = "shelfcast-test-model"
SESSION_SHAPE = [1, 16]


def write_model(d: Path, version: str, *, quality: str = "good", session_shape: list[int] | None = None,
                load_delay_s: float = 0.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    doc = {"fake": FAKE_TAG, "version": version, "quality": quality,
           "inputs": {"session_items": session_shape or SESSION_SHAPE}, "load_delay_s": load_delay_s,
           "padding": "x" * 300_000}  # big enough for several chunks
    (d / "model.tflite").write_text(json.dumps(doc))
    (d / "manifest.json").write_text(json.dumps({"version": version}))
    return d


class FakeScorer:
    def __init__(self, version: str, quality: str = "good") -> None:
        self.version = version
        self.quality = quality
        self.calls = 0

    def score(self, visit: Any, when: Any, k: int, exclude: set[str]) -> list[tuple[str, float, str]]:
        self.calls += 1
        if self.quality == "breaks_after_canary" and self.calls > 40:  # the canary makes 33 calls
            raise RuntimeError("interpreter failed")
        out: list[tuple[str, float, str]] = []
        if visit.picked and self.quality in ("good", "breaks_after_canary"):
            n = int(str(visit.picked[-1]).split("-")[-1])
            out.append((f"sku-{n + 1}", 1.0, "next"))
        out += [(f"filler-{i}", 0.5 - i / 100, "filler") for i in range(k - len(out))]
        return out


def load(path: Path) -> FakeScorer:
    p = Path(path)
    f = p / "model.tflite" if p.is_dir() else p
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a valid model file ({exc})") from None
    if doc.get("fake") != FAKE_TAG:
        raise ValueError("not a model file")
    shape = doc["inputs"]["session_items"]
    if shape != SESSION_SHAPE:
        raise ValueError(f"input 'session_items' has shape {shape} but the feature spec says {SESSION_SHAPE}")
    if doc.get("load_delay_s"):
        time.sleep(float(doc["load_delay_s"]))
    return FakeScorer(doc["version"], doc.get("quality", "good"))


def canary_requests(n: int = 30) -> list[Any]:
    from edge.sync.canary import CanaryRequest

    now = time.time()
    return [CanaryRequest(f"s{i}", "dairy", None, (f"sku-{i}",), now, f"sku-{i + 1}") for i in range(n)]
