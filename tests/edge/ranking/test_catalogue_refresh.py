"""A catalogue change synced from the cloud reaches the ranker while the node runs.

The ranker recommends only the store's catalogue (``catalogue_only``) and keeps one sku per display line
(``set_families``); both are read from the store when the model is attached. Before the fix a product added by a
catalogue delta was stored (and shown by name if some other path picked it) but the model never recommended it
until the next model swap or restart.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

from edge.app import Node, bundled_catalogue
from edge.config import NodeConfig
from edge.ranking.ranker import Ranker, RecRequest
from edge.recommend import Recommender, VisitState
from edge.store import Product


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig.model_validate({
        "node": {"data_dir": str(tmp_path), "store_id": "s1", "node_id": "n1"},
        "signage": {"enabled": False}, "shelves": {"enabled": False}, "camera": {"enabled": False}})


def _session_and_new_sku(catalogue: set[str]) -> tuple[list[str], str]:
    """A visit (3 catalogue picks) whose model answer, scored over the whole vocabulary, has a product the bundled
    catalogue does not hold among its top 3 (found by a seeded search: the catalogue holds the best sellers)."""
    r = Ranker.load()
    rng = random.Random(0)
    pool = sorted(catalogue)
    for _ in range(200):
        session = rng.sample(pool, 3)
        got = [s for s, _, _ in r.recommend_tuples(RecRequest(session=session, k=3, store_id="s1"))]
        outside = [s for s in got if s not in catalogue and s in r.vocabulary]
        if outside:
            return session, outside[0]
    raise AssertionError("no visit found whose top 3 holds a product outside the bundled catalogue")


def _on_a_running_node(tmp_path: Path, body: Callable[[Node, Recommender], None]) -> None:
    """``body`` against a started node (bundled catalogue and model, no hardware), stopped afterwards."""
    async def run() -> None:
        node = Node(_config(tmp_path))
        await node.start()
        try:
            assert node.recommender is not None and node.recommender.model is not None
            body(node, node.recommender)
        finally:
            await node.stop()

    asyncio.run(run())


def test_a_product_added_by_a_catalogue_delta_is_recommended_after_housekeeping(tmp_path: Path) -> None:
    catalogue = bundled_catalogue()
    session, new_sku = _session_and_new_sku({p.sku for p in catalogue})

    def body(node: Node, rec: Recommender) -> None:
        def answer(name: str) -> list[str]:
            v = VisitState(name, zone=None, picked=list(session))
            return [i.sku for i in rec.recommend(v, "screen-x").items]

        assert new_sku not in answer("before")
        template = next(p for p in catalogue if p.price)
        node.store.upsert_products([Product(new_sku, "Brand New Line 12 OZ", template.department,
                                            template.category, template.product_type, "New Brand", 3.49)])
        node.store.set_stock({new_sku: 20})
        assert new_sku not in answer("not yet")  # the ranker re-reads on housekeeping, not per pick
        node.housekeep_once()
        shown = answer("after")
        assert new_sku in shown, (new_sku, shown)
        node.housekeep_once()  # nothing changed since: no second read
        assert rec.refresh_catalogue() is False

    _on_a_running_node(tmp_path, body)


def test_a_new_variant_of_a_shown_line_does_not_show_twice(tmp_path: Path) -> None:
    """The families follow the catalogue too: a variant added under the name of a line the answer shows."""
    session, new_sku = _session_and_new_sku({p.sku for p in bundled_catalogue()})

    def body(node: Node, rec: Recommender) -> None:
        v0 = VisitState("v0", zone=None, picked=list(session))
        sibling = rec.recommend(v0, "screen-x").items[-1].sku  # the line the answer shows last
        line = node.store.product(sibling)
        assert line is not None
        # a new pack of that line, one the model ranks far higher: it should stand for the line, alone. It carries
        # the line's name and pack size, as a catalogue lists a line's variants (display_family strips the size
        # from the name only when package_size names it: "Store Eggs - X-Large 1 DZ" with "1 DZ")
        node.store.upsert_products([Product(new_sku, line.name, line.department, line.category,
                                            line.product_type, line.brand, line.price, line.package_size)])
        node.store.set_stock({new_sku: 20})
        node.housekeep_once()
        ranker = getattr(rec.model, "ranker", None)
        assert ranker is not None
        same0, filled, dropped = (ranker.stats["same_family"], rec.stats["filled_from_popular"],
                                  rec.stats["same_name_dropped"])
        items = rec.recommend(VisitState("v1", zone=None, picked=list(session)), "screen-x").items
        skus = [i.sku for i in items]
        names = [i.name for i in items]
        assert new_sku in skus and sibling not in skus, (new_sku, sibling, skus)
        assert len(names) == len(set(names)) == rec.k, names
        # the ranker kept one variant itself (its families know the new sku): the room dropped nothing
        assert ranker.stats["same_family"] > same0
        assert rec.stats["same_name_dropped"] == dropped and rec.stats["filled_from_popular"] == filled

    _on_a_running_node(tmp_path, body)
