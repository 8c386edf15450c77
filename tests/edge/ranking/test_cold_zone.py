"""A new shopper's zone (``model.cold_zone_blend``): the zone's items lead a cold list; nothing else changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import ConfigError, NodeConfig, parse_config
from edge.ranking.adapter import load_scorer, zone_items
from edge.ranking.ranker import Ranker, RecRequest, RerankConfig
from edge.recommend import Recommender, VisitState
from edge.store import Store

TZ = ZoneInfo("America/New_York")
ZONES = ("produce", "dairy", "bakery", "drinks")


def _demo_config(data_dir: Path | None = None, **model: object) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    if data_dir is not None:
        raw["node"]["data_dir"] = str(data_dir)
    raw["model"].update(model)
    return NodeConfig.model_validate(raw)


@pytest.fixture(scope="module")
def demo() -> tuple[Ranker, dict[str, list[str]]]:
    """The shipped model on the demo store's catalogue (catalogue-only, as the node runs it)."""
    r = Ranker.load(rerank=RerankConfig(diversity=0.3, repeat_cap=3))
    r.set_products(bundled_catalogue(), catalogue_only=True)
    return r, zone_items(_demo_config())


def _requests(r: Ranker, zone: str | None) -> Iterator[RecRequest]:
    """Cold, cold with demographics, with picks, with a history; morning and evening; k 6 and 20."""
    catalogue = [p.sku for p in bundled_catalogue() if p.sku in r._index]
    hist = tuple((s, 1.76e9 + b * 6 * 86400.0, 1.0) for b in range(5) for s in catalogue[b * 7: b * 7 + 4])
    prof = {"age": "35-44", "income": "50-74K", "kids_count": "1"}
    for hour in (9, 18):
        when = datetime(2026, 11, 30, hour, 0, tzinfo=TZ)
        for k in (6, 20):
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k)
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k, profile=prof)
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k, session=[catalogue[40]])
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k, session=catalogue[50:53],
                             profile=prof)
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k, history=hist)
            yield RecRequest(store_id="demo-store", zone=zone, when=when, k=k, history=hist, session=[catalogue[9]])


def _answers(r: Ranker, reqs: list[RecRequest]) -> list[list[tuple[str, float, str]]]:
    return [r.recommend_tuples(q) for q in reqs]


@pytest.mark.parametrize("catalogue_only", [True, False])
def test_no_zone_is_bit_identical_and_warm_shoppers_are_untouched(
        demo: tuple[Ranker, dict[str, list[str]]], catalogue_only: bool) -> None:
    """The evaluation harness has no zones: with ``zone=None`` every answer (sku, score, reason) is the one
    the ranker gave without the feature, so the model card's numbers stay valid. With a zone, a shopper with a
    history or a known pick is not touched either (only the cold list, where the zone is the best context)."""
    r, zi = demo
    r.rerank.catalogue_only = catalogue_only
    r.rerank.cold_zone_blend = 0.0
    saved, r._zone_items = r._zone_items, {}
    try:
        plain = list(_requests(r, None))
        zoned = list(_requests(r, "drinks"))
        before = _answers(r, plain)
        before_zoned = _answers(r, zoned)
        r.set_zone_items(zi)
        for blend in (0.5, 1.0):
            r.rerank.cold_zone_blend = blend
            assert _answers(r, plain) == before
            after_zoned = _answers(r, zoned)
            for q, a, b in zip(zoned, before_zoned, after_zoned, strict=True):
                if q.history or q.session:
                    assert a == b, q
            cold = [i for i, q in enumerate(zoned) if not (q.history or q.session)]
            assert all(after_zoned[i] != before_zoned[i] for i in cold)  # and the cold ones do change
    finally:
        r.rerank.catalogue_only = True
        r.rerank.cold_zone_blend = 0.0
        r._zone_items = saved


@pytest.mark.parametrize("blend", [0.5, 1.0])
def test_a_cold_shopper_sees_the_zone_s_items_first(demo: tuple[Ranker, dict[str, list[str]]],
                                                   blend: float) -> None:
    r, zi = demo
    r.set_zone_items(zi)
    r.rerank.cold_zone_blend = blend
    try:
        for hour in (9, 18):
            when = datetime(2026, 11, 30, hour, 0, tzinfo=TZ)
            first = {}
            for z in ZONES:
                out = r.recommend(RecRequest(store_id="demo-store", zone=z, when=when, k=6))
                got = [x.sku for x in out]
                assert got[0] in zi[z], (z, got)  # the zone's item leads
                in_zone = sum(s in zi[z] for s in got)
                assert in_zone >= (6 if blend >= 1 else 4), (z, got)  # 1: only the zone's items
                first[z] = got[0]
            assert len(set(first.values())) == len(ZONES)  # every zone a different first item
        # off: the same cold list in every zone (the problem this fixes)
        r.rerank.cold_zone_blend = 0.0
        lists = {tuple(x.sku for x in r.recommend(RecRequest(store_id="demo-store", zone=z, k=6))) for z in ZONES}
        assert len(lists) == 1
    finally:
        r.rerank.cold_zone_blend = 0.0


def test_zone_items_come_from_every_shelf_of_the_zone() -> None:
    cfg = _demo_config()
    zi = zone_items(cfg)
    assert set(zi) == set(ZONES)
    for sh in cfg.layout.shelves:
        assert {sl.sku for sl in sh.slots if sl.sku} <= set(zi[sh.zone])
    assert all(len(v) == len(set(v)) for v in zi.values())


def test_config_key_default_and_range() -> None:
    assert _demo_config().model.cold_zone_blend == 0.5
    assert _demo_config(cold_zone_blend=0).model.cold_zone_blend == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError) as ei:
            parse_config(f"model:\n  cold_zone_blend: {bad}\n")
        probs = {p.path: p for p in ei.value.problems}
        assert "model.cold_zone_blend" in probs
        assert ("0" if bad < 0 else "1") in probs["model.cold_zone_blend"].message
        assert probs["model.cold_zone_blend"].line == 2


def test_the_node_shows_a_new_shopper_the_zone_s_items(tmp_path: Path) -> None:
    """The recommend room with the configured scorer: a new shopper (no profile, no pick yet) in front of the
    drinks screen and one in front of the bakery screen get their zone's items first; with the key at 0 both
    get the same list."""
    catalogue = bundled_catalogue()
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        for blend, same in ((0.5, False), (0.0, True)):
            config = _demo_config(tmp_path, cold_zone_blend=blend)
            scorer = load_scorer(config, store=store)
            assert scorer.ranker.rerank.cold_zone_blend == blend
            rec = Recommender(config, store, Bus(), model=scorer)
            zi = zone_items(config)
            sets = {z: rec.recommend(VisitState(f"new-{z}", zone=z), f"{z}-screen") for z in ("drinks", "bakery")}
            for z, rs in sets.items():
                assert rs.model_version == scorer.version
                assert (rs.items[0].sku in zi[z]) or same, (z, [i.name for i in rs.items])
            firsts = [[i.sku for i in rs.items] for rs in sets.values()]
            assert (firsts[0] == firsts[1]) == same


class _Camera:
    """``SessionLocator``: fusion's answer for the screen asked about (the shopper it sees nearest)."""

    def __init__(self) -> None:
        self.at: dict[str, str] = {}  # zone -> session standing there

    def session_near(self, x: float, y: float, zone: str | None) -> str | None:
        return self.at.get(zone or "")


def test_a_cold_shopper_who_walks_to_another_zone_gets_that_zone(tmp_path: Path) -> None:
    """With the camera, a visit is often made by the first screen that sees the shopper; when they walk on to
    another zone's screen without picking anything, that screen's zone is theirs now (it was the old one's)."""
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(bundled_catalogue()).result(5)
        config = _demo_config(tmp_path)
        rec = Recommender(config, store, Bus(), model=load_scorer(config, store=store))
        cam = _Camera()
        rec.locator = cam
        zi = zone_items(config)
        cam.at["drinks"] = "walker"
        first = rec.refresh("drinks-screen")
        assert first.session == "walker" and first.zone == "drinks" and first.items[0].sku in zi["drinks"]
        cam.at = {"dairy": "walker"}
        later = rec.refresh("dairy-screen")
        assert later.session == "walker" and later.zone == "dairy"
        assert later.items[0].sku in zi["dairy"], [i.name for i in later.items]
        assert rec.visits["walker"].zone == "dairy"
