"""The ranker's shortcuts against its own plain paths, on more requests than the golden file holds: the candidate
order from stage 2's pool (``Ranker._hinted_order``) against the partition over all scores, and the model-output
memo of shoppers without history (``Ranker._out_memo``) against an invoke per request. Same answers, same
unrounded candidate scores, same counters, request by request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge.ranking import Ranker, RerankConfig

from .test_golden_answers import (
    _catalogue,
    _cold_requests,
    _Recorder,
    _shelf_requests,
    _shoppers,
    _visit_requests,
)


class _NoMemo(dict):  # type: ignore[type-arg]
    """An ``_out_memo`` that never keeps anything: every request invokes the model."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _pair(setup: str) -> tuple[Ranker, Ranker]:
    fast, plain = (Ranker.load(rerank=RerankConfig(diversity=0.3 if setup != "rules" else 0.0, repeat_cap=3,
                                                   cold_zone_blend=0.5)) for _ in range(2))
    plain._hinted_order = lambda *a: None  # type: ignore[method-assign]
    plain._out_memo = _NoMemo()
    for r in (fast, plain):
        voc = r.vocabulary
        if setup == "rules":
            r.set_rules(promote={voc[5]: 0.5, voc[9000]: 3.0}, suppress=[voc[1], voc[77]],
                        suppress_categories=[r._cat_names[3]])
        if setup == "catalogue":
            products, _ = _catalogue(r, np.random.default_rng(21))
            r.set_products(products, catalogue_only=True)
    return fast, plain


@pytest.mark.parametrize("setup", ["full", "rules", "catalogue"])
def test_shortcuts_match_the_plain_paths(setup: str) -> None:
    fast, plain = _pair(setup)
    rec_f, rec_p = _Recorder(fast), _Recorder(plain)
    rng_f, rng_p = np.random.default_rng(31), np.random.default_rng(31)
    pool = fast._catalogue_idx if setup == "catalogue" else None
    pool_p = plain._catalogue_idx if setup == "catalogue" else None
    streams = [
        (_visit_requests(fast, rng_f, _shoppers(fast, rng_f, 16, pool), tag="a", screen="s", stage2_off_every=5),
         _visit_requests(plain, rng_p, _shoppers(plain, rng_p, 16, pool_p), tag="a", screen="s",
                         stage2_off_every=5)),
        (iter(_cold_requests(fast)), iter(_cold_requests(plain))),
    ]
    if pool is not None and pool_p is not None:
        shop_f, shop_p = _shoppers(fast, rng_f, 2, pool), _shoppers(plain, rng_p, 2, pool_p)
        streams.append((_shelf_requests(fast, pool, shop_f), _shelf_requests(plain, pool_p, shop_p)))
    n = 0
    for a_it, b_it in streams:
        for qa, qb in zip(a_it, b_it, strict=True):
            a, b = fast.recommend(qa), plain.recommend(qb)
            assert a == b, (setup, n)
            assert [(c[0], c[1].hex() if isinstance(c[1], float) else c[1]) for c in rec_f.kept] == \
                [(c[0], c[1].hex() if isinstance(c[1], float) else c[1]) for c in rec_p.kept], (setup, n)
            assert fast.stats == plain.stats, (setup, n)
            n += 1
    assert n > 250
