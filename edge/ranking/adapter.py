"""Bridge from the node's recommend room (``edge.recommend.ModelScorer``) to ``Ranker``.

The room hands over a visit; this looks up the shopper's profile (history +
demographics) and stock in the store cache, builds a ``RecRequest`` and
returns (sku, score, reason) triples. Hot swap: ``swap(new_ranker)`` replaces
the ranker reference atomically; requests in flight finish on the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from edge.ranking.ranker import Ranker, RecRequest, RerankConfig
from edge.recommend import display_family

__all__ = ["RankerScorer", "load_scorer", "zone_items"]

log = logging.getLogger("shelfcast.ranking")


class RankerScorer:
    """``ModelScorer`` for ``edge.recommend.Recommender``."""

    def __init__(self, ranker: Ranker, store: Any = None, store_id: str | None = None, *,
                 zone_items: Mapping[str, Sequence[str]] | None = None) -> None:
        self.ranker = ranker
        self.store = store
        self.store_id = store_id
        self._catalogue_gen = -1  # the store's ``catalogue_gen`` the ranker's products were read at
        self.zone_items = dict(zone_items or {})  # zone -> skus its shelves stock (``Ranker.set_zone_items``)
        if self.zone_items:
            ranker.set_zone_items(self.zone_items)
        if store is not None:
            self.attach_store(store)

    @property
    def version(self) -> str:
        return self.ranker.version

    def attach_store(self, store: Any) -> None:
        """Use the store cache for stock, product attributes (new items) and profiles."""
        self.store = store
        self._configure(self.ranker)

    def refresh_catalogue(self) -> bool:
        """Re-read the store's catalogue if it changed since the ranker last read it (a synced catalogue delta:
        new products become recommendable, display families follow). Off the hot path: the node's housekeeping
        calls it every few seconds; ~0.4 ms for the bundled catalogue, a few ms for a full store's."""
        if self.store is None or getattr(self.store, "catalogue_gen", 0) == self._catalogue_gen:
            return False
        self._configure(self.ranker)
        return True

    def _configure(self, ranker: Ranker) -> None:
        if self.store is None:
            return
        self._catalogue_gen = getattr(self.store, "catalogue_gen", 0)
        ranker.set_stock_lookup(self.store.stock)
        try:
            products = list(self.store.products().values())
            ranker.set_products(products, catalogue_only=True)
            # one sku per display line in an answer: the room shows one anyway, and a variant it drops would
            # leave its set short (the demo's catalogue: 14 % of sets, filled with popular items)
            ranker.set_families({p.sku: display_family(p) for p in products})
        except Exception as exc:  # a broken catalogue must not stop ranking
            log.warning("could not load product attributes into the ranker: %s", exc)

    def swap(self, ranker: Ranker) -> Ranker:
        """Install a new (already verified) ranker; returns the old one."""
        if self.zone_items:
            ranker.set_zone_items(self.zone_items)
        self._configure(ranker)
        old, self.ranker = self.ranker, ranker
        return old

    def reset_caps(self, session: str) -> None:
        """A new round of the ranker's frequency caps for ``session`` (the recommend room reset its own)."""
        self.ranker.reset_caps(session)

    def end_visit(self, session: str) -> None:
        """The recommend room expired ``session``: the ranker drops its caps and per-visit caches."""
        self.ranker.end_session(session)

    def not_shown(self, session: str, skus: list[str]) -> None:
        """``skus`` of the last answer for ``session`` were left off the screen (the recommend room shows one
        variant per display name): the ranker's frequency caps must not count them as shown."""
        self.ranker.forget_shown(session, skus)

    def score(self, visit: Any, when: datetime, k: int, exclude: set[str],
              second_stage: bool = True) -> list[tuple[str, float, str]]:
        history: tuple[tuple[str, float, float], ...] = ()
        profile = None
        customer = getattr(visit, "customer", None)
        if customer and self.store is not None:
            p = self.store.profile(customer)
            if p is not None:
                history, profile = p.history, (p.demographics or None)
        picked = getattr(visit, "picked", ())
        # the room's visit list grows by appends (``VisitState.picked.append``): handed over as it is, so the
        # ranker maps just the new picks instead of copying and comparing the whole visit per request. At
        # 2 x ``PICKS_KEPT`` the room replaces it by a new list of its last picks: not the list the ranker mapped,
        # so it maps that one afresh (``Ranker._session_state``)
        own = type(picked) is list
        req = RecRequest(history=history, session=picked if own else list(picked), store_id=self.store_id,
                         zone=getattr(visit, "zone", None), when=when, profile=profile, exclude=exclude,
                         k=k, session_id=getattr(visit, "session", None), session_append_only=own,
                         second_stage=second_stage,
                         promotions=None if self.store is None or when is None else self.store.promotion_plan(
                             when.date()))
        return self.ranker.recommend_tuples(req)


def load_scorer(config: Any, store: Any = None) -> RankerScorer:
    """The bundled (or configured) model, verified; raises ModelError if it must be refused."""
    m = config.model
    ranker = Ranker.load(m.path, timezone=config.node.timezone,
                         rerank=RerankConfig(diversity=m.diversity, repeat_cap=m.repeat_cap,
                                             cold_zone_blend=m.cold_zone_blend))
    return RankerScorer(ranker, store=store, store_id=config.node.store_id, zone_items=zone_items(config))


def zone_items(config: Any) -> dict[str, list[str]]:
    """zone -> the skus its shelves stock (every shelf of the zone, in layout order; a sku stocked in two
    zones belongs to both): what a cold shopper standing in the zone is shown first (``model.cold_zone_blend``)."""
    out: dict[str, list[str]] = {}
    for sh in config.layout.shelves:
        skus = out.setdefault(sh.zone, [])
        for sl in sh.slots:
            if sl.sku is not None and sl.sku not in skus:
                skus.append(sl.sku)
    return out
