"""Stage 2 with nothing left to re-rank: every catalogue item picked or excluded.

Seen in ``shelfcast bench hotpath`` / ``bench e2e`` (1–15 sets a run): a small store catalogue whose items a
session had all picked or been shown up to the cap left stage 2 an empty pool, ``Stage2.features`` raised
``IndexError`` and the node logged a traceback on the event loop and served the popularity fallback."""

from __future__ import annotations

from datetime import datetime, timedelta

from edge.ranking import Ranker, RecRequest


def test_a_request_that_excludes_the_whole_catalogue_is_answered_without_stage2_errors() -> None:
    r = Ranker.load()
    assert r._stage2 is not None  # the shipped release has a second stage: the path under test
    vocab = list(r.vocabulary)
    cat = vocab[:3]
    r.set_products([{"sku": s, "name": s, "price": 1.0} for s in cat], catalogue_only=True)
    when = datetime(2026, 11, 30, 17, 0)
    history = [(vocab[i], when - timedelta(days=7 * w), 1) for w in range(1, 4) for i in (10, 11, 12)]
    for session, exclude in (([cat[0]], tuple(cat[1:])), ([], tuple(cat)), (list(cat), ())):
        req = RecRequest(history=history, session=session, when=when, exclude=exclude, k=4)
        got = r.recommend(req)  # raised IndexError in Stage2.features before the fix
        assert not {g.sku for g in got} & set(cat)  # nothing excluded or picked comes back
        assert all(g.sku in cat for g in got)  # catalogue_only: nothing outside the store's catalogue
