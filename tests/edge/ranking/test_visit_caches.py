"""Many checked-in shoppers at once: the ranker keeps each visit's parsed history (and stage 2's per-visit
tables) while they shop in turns, so a pick does not re-parse a 270-line history. With room for 8 visits
the caches thrashed as soon as more shoppers interleaved (490–512 vs 363–374 µs CPU a request for 32–120
shoppers round-robin, 2026-12-01); answers are the same either way."""

from __future__ import annotations

import numpy as np

from edge.ranking import Ranker, RecRequest
from edge.ranking.ranker import HIST_CACHE_VISITS

T0 = 1_700_000_000.0
DAY = 86400.0


def test_forty_interleaved_shoppers_keep_their_parsed_histories() -> None:
    r = Ranker.load()
    assert HIST_CACHE_VISITS >= 64
    rng = np.random.default_rng(5)
    voc = r.vocabulary
    visits = []
    for _ in range(40):
        own = rng.choice(len(voc), 30, replace=False)
        hist = tuple((voc[j], T0 + b * 5 * DAY, 1.0) for b in range(12) for j in own[b % 5::5])
        visits.append((hist, [voc[j] for j in rng.choice(len(voc), 3, replace=False)]))
    first = {}
    for n in range(3):  # three rounds of picks, the shoppers taking turns
        for i, (hist, picks) in enumerate(visits):
            req = RecRequest(history=hist, session=picks[:n], when=T0 + 70 * DAY + n * 60, k=10,
                             session_id=f"v{i}")
            got = [g.sku for g in r.recommend(req)]
            assert got
            st = r._history(hist)  # what the next pick of this visit would use
            if n == 0:
                first[i] = st
            else:
                assert st is first[i], f"visit {i}: history parsed again in round {n}"
    if r._stage2 is not None:
        assert len(r._stage2._visits) == 40  # stage 2's per-visit tables too (the shipped release has one)
