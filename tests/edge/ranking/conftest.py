"""Fixtures shared by the ranking tests."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from edge.ranking import Ranker, RecRequest
from edge.ranking.ranker import DEFAULT_MODEL_DIR, sha256_bytes
from edge.ranking.stage2 import FEATURES

POOL = 60  # the pool size the attached stage-2 files declare
T0 = 1_700_000_000.0
DAY = 86400.0


def _random_stage2_weights(seed: int = 3, hidden: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    F = len(FEATURES)
    f32 = np.float32
    return {"mean": rng.normal(0, 0.1, F).astype(f32), "inv_std": rng.uniform(0.5, 2, F).astype(f32),
            "w1": rng.normal(0, 0.5, (F, hidden)).astype(f32), "b1": rng.normal(0, 0.1, hidden).astype(f32),
            "wl": rng.normal(0, 1.0, F).astype(f32), "w2": rng.normal(0, 1.0, hidden).astype(f32)}


@pytest.fixture
def stage2_weights() -> Callable[..., dict[str, np.ndarray]]:
    """``(seed=3, hidden=8) -> one stage-2 weight set``: seeded random numbers of the shapes ``stage2.npz``
    holds, so a re-ranking visibly differs from stage 1's and a wrong feature or formula changes the answer."""
    return _random_stage2_weights


def _stage2_npz(params: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]],
                features: tuple[str, ...] = FEATURES, prefixes: str = "sn") -> bytes:
    """The bytes of a ``stage2.npz``: one weight set under each of ``prefixes`` (s: with picks, n: without), or
    ``{"s": set, "n": set}`` as given."""
    sets = params if set(params) <= {"s", "n"} else {pre: params for pre in prefixes}
    both = {f"{pre}_{k}": v for pre, p in sets.items() for k, v in p.items()}  # type: ignore[union-attr]
    buf = io.BytesIO()
    np.savez(buf, features=np.asarray(features), pool=np.asarray(POOL, np.int32), **both)  # type: ignore[arg-type]
    return buf.getvalue()


def _stage2_release(dest: Path, data: bytes | None, digest: str | None = None) -> Path:
    """A copy of the shipped release under ``dest`` (a new directory each call) with ``data`` as its stage 2
    (``digest``: the manifest's sha256, to make a wrong one), or (None) without any stage 2."""
    d = dest / f"rel{len(list(dest.glob('rel*'))) if dest.exists() else 0}"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    man = json.loads((d / "manifest.json").read_text())
    if data is None:
        if man.pop("stage2_file", None):
            (d / "stage2.npz").unlink()
        man.pop("stage2_sha256", None)
        man.pop("stage2", None)
    else:
        (d / "stage2.npz").write_bytes(data)
        man["stage2_file"] = "stage2.npz"
        man["stage2_sha256"] = digest or sha256_bytes(data)
    (d / "manifest.json").write_text(json.dumps(man))
    return d


@pytest.fixture
def stage2_npz() -> Callable[..., bytes]:
    """``(params, features=FEATURES, prefixes="sn") -> stage2.npz bytes`` (``_stage2_npz``)."""
    return _stage2_npz


@pytest.fixture
def stage2_release() -> Callable[..., Path]:
    """``(dest, data, digest=None) -> release dir``: the shipped release with ``data`` as its stage 2 (None:
    without one), as ``models/stage2.py`` attaches it (``_stage2_release``)."""
    return _stage2_release


def _stage2_request(r: Ranker, session: list[int], hist_items: list[int]) -> RecRequest:
    voc = r.vocabulary
    hist = [(voc[i], T0 + b * 9 * DAY + i, 1.0) for b in range(5) for i in hist_items[b % 2::1]]
    return RecRequest(history=hist, session=[voc[i] for i in session], store_id="367", when=T0 + 50 * DAY, k=10)


@pytest.fixture
def stage2_request() -> Callable[[Ranker, list[int], list[int]], RecRequest]:
    """``(ranker, session, hist_items) -> RecRequest``: a warm shopper (5 baskets of ``hist_items``, vocabulary
    indices) with ``session`` picked, store 367, 50 days after the first basket."""
    return _stage2_request
