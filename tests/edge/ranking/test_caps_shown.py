"""The model ranker's frequency caps count only what reached the screen (not a dropped same-name variant)."""

from __future__ import annotations

import collections
from importlib import resources
from pathlib import Path

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.ranking.adapter import load_scorer
from edge.recommend import Recommender, VisitState
from edge.store import Store


def test_a_dropped_same_name_variant_is_not_counted_as_shown(tmp_path: Path) -> None:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    raw["model"]["repeat_cap"] = 2
    config = NodeConfig.model_validate(raw)
    catalogue = bundled_catalogue()
    by_name = collections.defaultdict(list)
    for p in catalogue:
        by_name[p.name].append(p.sku)
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        scorer = load_scorer(config, store=store)
        ranker = scorer.ranker
        # the room's drop is under test here (its safety net for a ranker without families): the ranker's own
        # one-variant-per-line rule (test_families.py) would never hand it the twin
        ranker.set_families({})
        twins = next(s for s in by_name.values() if len(s) >= 2 and all(x in ranker._index for x in s[:2]))[:2]
        ranker.set_rules(promote={twins[0]: 100.0, twins[1]: 99.0})  # both variants at the top of every answer
        rec = Recommender(config, store, Bus(), model=scorer)
        v = VisitState("v1", zone="dairy")
        rs = rec.recommend(v, "dairy-screen")
        assert rs.items[0].sku == twins[0] and twins[1] not in {i.sku for i in rs.items}
        assert rec.stats["same_name_dropped"] >= 1
        counts = ranker._caps[(None, "v1")]
        assert counts.get(twins[1], 0) == 0  # it never was on a screen
        assert {s for s, n in counts.items() if n} == {i.sku for i in rs.items}  # the ranker and the room agree
        assert all(counts[s] == v.shown[s] for s in v.shown)
        rs2 = rec.recommend(v, "dairy-screen")  # twins[0] reaches the cap (2) here, in the room and the ranker
        assert rs2.items[0].sku == twins[0]
        assert counts.get(twins[1], 0) == 0 and counts[twins[0]] == 2
        # the ranker's capped set is what the room capped: the dropped variant is still free in both
        rs3 = rec.recommend(v, "dairy-screen")
        assert twins[0] not in {i.sku for i in rs3.items}
        assert {s for s, n in counts.items() if n >= 2} == v.capped
