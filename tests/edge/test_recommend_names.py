"""A set never shows the same display name twice (pack and size variants share names in real catalogues)."""

from __future__ import annotations

import collections
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.recommend import Recommender, VisitState, display_family
from edge.store import Store


class ListScorer:
    version = "test-model"

    def __init__(self, skus: list[str]) -> None:
        self.skus = skus

    def score(self, visit: Any, when: datetime, k: int, exclude: set[str],
              second_stage: bool = True) -> list[tuple[str, float, str]]:
        return [(s, 1.0 - i / 100, "test") for i, s in enumerate(self.skus)][:k]


def _demo_config(tmp_path: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    return NodeConfig.model_validate(raw)


def test_same_name_skus_show_once(tmp_path: Path) -> None:
    config = _demo_config(tmp_path)
    catalogue = bundled_catalogue()
    by_name = collections.defaultdict(list)
    for p in catalogue:
        by_name[display_family(p)].append(p.sku)
    twins = next(skus for skus in by_name.values() if len(skus) >= 3)
    others = [p.sku for p in catalogue if len(by_name[display_family(p)]) == 1][:20]
    # the model ranks three same-name variants among its best k
    ranked = [twins[0], others[0], twins[1], others[1], twins[2], *others[2:]]
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        rec = Recommender(config, store, Bus(), model=ListScorer(ranked))
        v = VisitState("v1", zone="dairy")
        rs = rec.recommend(v, "dairy-screen")
        names = [i.name for i in rs.items]
        assert len(names) == len(set(names)), names
        assert rs.items[0].sku == twins[0]  # the best variant stands for its name
        assert twins[1] not in {i.sku for i in rs.items} and twins[2] not in {i.sku for i in rs.items}
        assert rec.stats["same_name_dropped"] == 2
        assert twins[1] not in v.shown  # only what was shown counts toward the frequency cap
        # the popularity fallback (no model) too
        rec.model = None
        fb = rec.recommend(VisitState("v2", zone="dairy"), "dairy-screen")
        assert len({i.name for i in fb.items}) == len(fb.items) == rec.k


def test_size_variants_show_once(tmp_path: Path) -> None:
    """"Store Fluid Milk White Only 1 GA", "... 1 QT" and the size-less name are one line to a shopper: the best
    ranked variant stands for the family (seen in the demo: a gallon and a size-less milk in one set)."""
    config = _demo_config(tmp_path)
    catalogue = bundled_catalogue()
    family = collections.defaultdict(list)
    for p in catalogue:
        family[display_family(p)].append(p)
    # a family whose members carry different display names (sizes)
    members = next(ps for ps in family.values() if len({p.name for p in ps}) >= 3)
    sizes = list({p.name: p for p in reversed(members)}.values())[:3]  # one product per distinct name
    assert len({p.name for p in sizes}) == 3 and all(display_family(p) == display_family(sizes[0]) for p in sizes)
    others = [ps[0].sku for ps in family.values() if len(ps) == 1][:20]
    ranked = [sizes[0].sku, others[0], sizes[1].sku, others[1], sizes[2].sku, *others[2:]]
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        rec = Recommender(config, store, Bus(), model=ListScorer(ranked))
        rs = rec.recommend(VisitState("v1", zone="dairy"), "dairy-screen")
        shown = [i.sku for i in rs.items]
        assert shown[0] == sizes[0].sku and sizes[1].sku not in shown and sizes[2].sku not in shown, shown
        assert len({display_family(store.product(s)) for s in shown}) == len(shown) == rec.k  # the spares fill in
        assert rec.stats["same_name_dropped"] == 2


def test_display_family_strips_only_a_trailing_size() -> None:
    from edge.store import Product

    assert display_family(Product("1", "Store Milk 1 GA", package_size="1 GA")) == "Store Milk"
    assert display_family(Product("2", "Store Milk", package_size="")) == "Store Milk"
    assert display_family(Product("3", "Cola 12 OZ Can", package_size="12 OZ")) == "Cola 12 OZ Can"
    assert display_family(Product("4", "12 OZ", package_size="12 OZ")) == "12 OZ"  # never an empty line


def test_a_short_model_answer_is_filled_with_popular_items(tmp_path: Path) -> None:
    """In a long visit the model's frequency caps can leave it fewer than k items: the zone's popular items
    fill the set (never a picked or repeated line), the model's items first, the set still the model's."""
    config = _demo_config(tmp_path)
    catalogue = bundled_catalogue()
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        fam = collections.Counter(display_family(p) for p in catalogue)
        singles = [p.sku for p in catalogue if fam[display_family(p)] == 1][:3]  # three different lines
        rec = Recommender(config, store, Bus(), model=ListScorer(singles[:2]))
        v = VisitState("v1", zone="dairy", picked=[singles[2]])
        rs = rec.recommend(v, "dairy-screen")
        skus = [i.sku for i in rs.items]
        assert len(skus) == rec.k and skus[:2] == singles[:2], skus
        assert rs.model_version == "test-model" and rec.stats["filled_from_popular"] == rec.k - 2
        assert singles[2] not in skus  # just picked
        assert len({display_family(store.product(s)) for s in skus}) == rec.k
        assert all(i.reason != "test" for i in rs.items[2:])  # the fill carries the popularity reasons
        assert all(v.shown[s] == 1 for s in skus)
