"""The recommend room's overload guard (``model.stage2_skip_after_ms``): in a burst, the visits ranked one
after another get the model's second stage until one has waited longer than the threshold."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent
from edge.recommend import Recommender
from edge.store import Store

RANK_S = 0.003  # what each ranking costs here: more than the 1 ms default threshold


class SlowScorer:
    """A model scorer that takes ``RANK_S`` per request (busy, like ranking on the loop) and records whether
    it was asked for the second stage."""

    version = "test-model"

    def __init__(self, skus: list[str]) -> None:
        self.skus = skus
        self.calls: list[tuple[str, bool]] = []

    def score(self, visit: Any, when: datetime, k: int, exclude: set[str],
              second_stage: bool = True) -> list[tuple[str, float, str]]:
        end = time.perf_counter() + RANK_S
        while time.perf_counter() < end:
            pass
        self.calls.append((visit.session, second_stage))
        return [(s, 1.0 - i / 100, "test") for i, s in enumerate(self.skus[:k]) if s not in exclude]


def _config(tmp: Path, skip_after_ms: float | None) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    if skip_after_ms is not None:
        raw["model"]["stage2_skip_after_ms"] = skip_after_ms
    return NodeConfig.model_validate(raw)


def _burst(tmp: Path, skip_after_ms: float | None) -> tuple[Recommender, SlowScorer]:
    """Four visits' picks handled in one loop iteration (a burst from four shelves), then ranked."""
    config = _config(tmp, skip_after_ms)
    store = Store(tmp / "sc.db", flush_interval_ms=5).open()
    try:
        catalogue = bundled_catalogue()
        store.upsert_products(catalogue).result(5)
        skus = [p.sku for p in catalogue]
        scorer = SlowScorer(skus[10:40])
        rec = Recommender(config, store, Bus(), model=scorer)
        shelves = {}  # one shelf in each zone with a full screen: four visits, four screens
        for sh in config.layout.shelves:
            shelves.setdefault(sh.zone, sh.id)

        async def run() -> None:
            await rec.start()
            for i, (zone, shelf) in enumerate(list(shelves.items())[:4]):
                rec.on_shopper_event(ShopperEvent(session=f"v{i}", sku=skus[i], action="pick", zone=zone,
                                                  shelf=shelf, slot=0))
            await asyncio.sleep(0.05)  # the end of the iteration: the due visits are ranked
            await rec.stop()

        asyncio.run(run())
    finally:
        store.close()
    return rec, scorer


def test_a_burst_skips_stage2_once_a_visit_has_waited(tmp_path: Path) -> None:
    rec, scorer = _burst(tmp_path, None)  # the default threshold, 1 ms
    assert rec.config.model.stage2_skip_after_ms == 1.0
    assert [s for s, _ in scorer.calls] == ["v0", "v1", "v2", "v3"]  # one ranking per visit, in order
    # the first waited ~0 ms; each later one waited >= 3 ms (the rankings before it)
    assert [full for _, full in scorer.calls] == [True, False, False, False]
    assert rec.stats["stage2_skipped"] == 3 and rec.stats["model"] == 4


def test_threshold_zero_always_runs_stage2(tmp_path: Path) -> None:
    rec, scorer = _burst(tmp_path, 0)
    assert [full for _, full in scorer.calls] == [True] * 4
    assert rec.stats["stage2_skipped"] == 0


def test_negative_threshold_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="stage2_skip_after_ms"):
        _config(tmp_path, -1)
