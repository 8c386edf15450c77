"""The recommend hot path's shortcuts give the same answers as the plain versions they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from edge.ranking import Ranker, RecRequest, RerankConfig
from edge.ranking.features import SESSION_LEN, history_structure
from edge.ranking.ranker import Recommendation, _top_m

T0 = 1_700_000_000.0
DAY = 86400.0


def _plain_structure(idx: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, ...]:
    tb, binv = np.unique(t, return_inverse=True)
    n_b = len(tb)
    valid = idx >= 0
    pair = np.unique(idx[valid].astype(np.int64) * n_b + binv[valid])
    items, inv = np.unique(pair // n_b, return_inverse=True)
    bk = pair % n_b
    last_b = np.zeros(len(items), np.int64)
    np.maximum.at(last_b, inv, bk)
    return tb, items, inv, bk, np.bincount(inv, minlength=len(items)), last_b


@pytest.mark.parametrize("ordered", [True, False])
def test_history_structure_matches_plain_unique(ordered: bool) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        t = rng.integers(0, 25, n).astype(np.float64)
        if ordered:
            t.sort()
        idx = rng.integers(-1, 60, n)
        st = history_structure(idx, t)
        assert st is not None
        if not (idx >= 0).any():
            continue
        for want, got in zip(_plain_structure(idx, t), (st.tb, st.items, st.inv, st.bk, st.count, st.last_b),
                             strict=True):
            assert want.dtype == got.dtype and np.array_equal(want, got)


def test_top_m_is_the_argpartition_set() -> None:
    rng = np.random.default_rng(2)
    for m in (1, 13, 53, 400, 700, 10_000):
        s = rng.standard_normal(10_000).astype(np.float32)
        got = _top_m(s, m)
        want = np.argpartition(-s, m - 1)[:m]
        assert len(got) == m and set(got.tolist()) == set(want.tolist())
    flat = np.zeros(10_000, np.float32)  # all tied: still m distinct indices
    assert len(set(_top_m(flat, 53).tolist())) == 53


def _plain_mmr(kept: list[tuple[str, float, int, int]], k: int, lam: float) -> list[tuple[str, float, int, int]]:
    if lam <= 0 or len(kept) <= k:
        return kept[:k]
    kept = kept[: 4 * k]
    s = np.array([c[1] for c in kept], np.float64)
    span = float(s.max() - s.min()) or 1.0
    base = (1 - lam) * (s - s.min()) / span
    cats = np.array([c[2] for c in kept])
    penalty = np.zeros(len(kept))
    chosen: list[int] = []
    for _ in range(min(k, len(kept))):
        j = int(np.argmax(base - penalty))
        chosen.append(j)
        base[j] = -np.inf
        penalty[cats == cats[j]] = lam
    return [kept[j] for j in chosen]


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    return Ranker.load()


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3, 0.7, 1.0])
def test_mmr_matches_the_numpy_version(ranker: Ranker, lam: float) -> None:
    rng = np.random.default_rng(3)
    ranker.rerank.diversity = lam
    try:
        for _ in range(300):
            n = int(rng.integers(1, 60))
            scores = np.round(rng.standard_normal(n) * 3, int(rng.integers(0, 3)))  # rounding makes ties
            scores = sorted(scores.tolist(), reverse=True)
            kept = [(f"s{i}", float(v), int(rng.integers(0, 6)), i) for i, v in enumerate(scores)]
            k = int(rng.integers(1, 15))
            assert ranker._mmr(kept, k) == _plain_mmr(kept, k, lam)
    finally:
        ranker.rerank.diversity = RerankConfig().diversity


def test_stock_is_looked_up_only_for_the_head() -> None:
    r = Ranker.load()
    asked: list[str] = []

    def stock(sku: str) -> int | None:
        asked.append(sku)
        return None

    req = RecRequest(history=[(r.vocabulary[i], T0 + b * 7 * DAY, 1.0) for b in range(5) for i in (3, 40, 77)],
                     store_id="367", k=5)
    before = [x.sku for x in r.recommend(req)]
    r.set_stock_lookup(stock)
    after = [x.sku for x in r.recommend(req)]
    assert after == before
    assert 0 < len(asked) <= 4 * 5  # MMR sees the first 4k survivors; nothing past them is looked up


def test_incremental_session_state_matches_a_fresh_one() -> None:
    """A visit's session is mapped pick by pick (cached per session_id); every answer, reason and counter
    equals the one from a ranker that maps the whole session again on every request."""
    cached, fresh = Ranker.load(), Ranker.load()
    rng = np.random.default_rng(4)
    voc = cached.vocabulary
    hist = [(voc[i], T0 + b * 7 * DAY, 1.0) for b in range(4) for i in (5, 50, 500)]
    shown: list[str] = []
    for visit in range(6):
        session: list[object] = []
        for step in range(80):  # more than SESSION_LEN distinct picks: which are the latest matters
            r = rng.random()
            if r < 0.1:
                session.append(f"unknown-{step}")  # counted, ignored
            elif r < 0.15:
                session.append(int(voc[int(rng.integers(0, 50))]))  # not a string: looked up as one
            elif r < 0.45 and session:
                session.append(session[int(rng.integers(0, len(session)))])  # picked again: now the latest
            elif r < 0.7 and shown:
                session.append(shown[int(rng.integers(0, len(shown)))])  # took a recommended item
            else:
                session.append(voc[int(rng.integers(0, 2000))])
            if visit == 5 and step == 50:
                session = session[::-1]  # not an extension of what was cached: rebuilt
            req = RecRequest(history=hist if visit % 2 else (), session=list(session), store_id="367",
                             when=T0 + 40 * DAY + step * 60, k=8, session_id=f"v{visit}")
            fresh._sess_cache.clear()
            a, b = cached.recommend(req), fresh.recommend(req)
            # and the state equals the plain per-request derivation it replaced
            idx = [i for i in (cached._index.get(x if isinstance(x, str) else str(x), -1) for x in session)
                   if i >= 0]
            st = cached._session_state(req)
            assert list(st.last) == list(dict.fromkeys(reversed(idx)))[::-1]
            assert list(st.first) == list(dict.fromkeys(idx))
            assert st.skus == set(session) and st.unknown == len(session) - len(idx)
            assert a == b
            shown = [x.sku for x in a]
            assert cached.stats == fresh.stats
    assert len(cached._sess_cache) == 6


def test_wide_path_memo_gives_the_same_scores(ranker: Ranker) -> None:
    """The wide-path scores are memoised by context vector: a hit returns exactly what a miss computes."""
    voc = ranker.vocabulary
    profile = {"age": "45-54", "income": "50-74K", "household_size": "2", "kids_count": "0"}
    reqs = [RecRequest(history=[(voc[i], T0 + b * 7 * DAY, 1.0) for b in range(nb) for i in (3, 30)],
                       session=[voc[j] for j in range(ns)], store_id="367", profile=profile if nb % 2 else None,
                       when=T0 + 60 * DAY + h * 3600, k=6)
            for nb in (0, 1, 3) for ns in (0, 2, 20) for h in (0, 9, 17)]
    ranker._wide_memo.clear()
    ranker._ctx_memo.clear()
    first = [ranker.scores(q).copy() for q in reqs]  # misses (and some hits: repeated contexts)
    assert 0 < len(ranker._wide_memo) <= len(reqs) and 0 < len(ranker._ctx_memo) <= len(reqs)
    again = [ranker.scores(q) for q in reqs]  # all hits
    for q, a, b in zip(reqs, first, again, strict=True):
        ranker._wide_memo.clear()
        ranker._ctx_memo.clear()
        assert np.array_equal(a, b) and np.array_equal(a, ranker.scores(q))  # and a fresh miss


def test_context_memo_sees_a_profile_changed_in_place(ranker: Ranker) -> None:
    """The context memo is keyed by the profile's identity but checks a copy of it: the same dict changed
    in place between requests gives that profile's scores, not the memoised ones."""
    voc = ranker.vocabulary
    prof: dict[str, str] = {"age": "45-54", "income": "50-74K"}
    req = RecRequest(session=[voc[3]], store_id="367", profile=prof, when=T0, k=5)
    keep, ranker.cold_profile = ranker.cold_profile, True  # a release may ignore a cold shopper's demographics
    try:
        a = ranker.scores(req).copy()
        prof["age"] = "19-24"
        b = ranker.scores(req).copy()
        fresh = ranker.scores(RecRequest(session=[voc[3]], store_id="367", profile=dict(prof), when=T0, k=5))
    finally:
        ranker.cold_profile = keep
    assert not np.array_equal(a, b) and np.array_equal(b, fresh)


def _plain_reason(r: Ranker, c: tuple[str, float, int, int], share: dict[int, float], sess_idx: list[int],
                  emb_s: np.ndarray | None, req: RecRequest) -> str:
    """One reason, computed from scratch (what ``Ranker._reasons`` did per item before its per-visit memo)."""
    i = c[3]
    if i < 0:
        return "new in store"
    sh = share.get(i)
    if sh is not None:
        return "you buy this often" if sh >= 0.2 else "bought before"
    if emb_s is not None:
        sims = emb_s @ r.item_emb[i]
        j = int(sims.argmax())
        if sims[j] > 0.2:
            return f"because you picked up {r._name(r.vocabulary[sess_idx[j]])}"
    if not req.history:
        return "popular here at this hour"
    return "picked for you"


def _stage1_only(*rankers: Ranker) -> None:
    """Stage 1 alone, for the comparisons whose subject is stage 1's scoring (the catalogue pool): with
    ``catalogue_only`` stage 2 re-ranks the catalogue's best, which ``test_stage2_pool.py`` checks."""
    for r in rankers:
        r._stage2 = None


def _plain_recommend(r: Ranker, req: RecRequest) -> list[Recommendation]:
    """``Ranker.recommend`` as it was before the masked re-rank: one tuple per candidate, one Python pass
    over all of them, one reason computed per chosen item."""
    r.stats["requests"] += 1
    k = max(1, min(int(req.k), 100))
    if r._knows_nothing(req):
        return r._fallback(req, k)
    scores, u, rep, sess_idx, _ = r._invoke(req)
    scores = scores + r._tie
    excl = set(req.exclude)
    if r.rerank.drop_session_items:
        excl |= r._session_state(req).skus
    if r._stage2 is not None:  # the shipped release's second stage, on the latest distinct picks (oldest first);
        # its pool without the excluded and suppressed items
        drop = np.array([r._index.get(s, -1) for s in excl], np.int64) if excl else None
        r._stage2.rescore(scores, rep, list(r._session_state(req).last)[-SESSION_LEN:], r._heat, drop=drop,
                          block=r._rule_block)
    cap_key = (req.screen, req.session_id) if (req.screen or req.session_id) else None
    capped = r._caps.get(cap_key) if cap_key else None
    top, order, block = r._candidate_order(scores, len(excl) + k)
    voc, cat_of = r.vocabulary, r.category
    cand = [(voc[i], sc, c, i) for i, sc, c in zip(order.tolist(), scores[order].tolist(), cat_of[order].tolist(),
                                                   strict=True) if voc[i] not in excl]
    if r._promote:
        have = set(top.tolist())
        for sku in r._promote:
            i = r._index.get(sku, -1)
            if i >= 0 and i not in have and sku not in excl and (block is None or not block[i]):
                cand.append((sku, float(scores[i]), int(cat_of[i]), i))
    if r.rerank.new_items and len(r._new_skus):
        ns = r._new_W @ u + r._new_b
        nt = np.argsort(-ns)[:k]
        cand.extend(c for c in ((r._new_skus[j], float(ns[j]), int(r._new_cat[j]), -1) for j in nt)
                    if r._allowed_new(c, excl))
        cand.sort(key=lambda c: -c[1])
    need = 4 * k if r.rerank.diversity > 0 else k
    kept = []
    n_plain = n_capped = n_oos = 0
    for c in cand:
        sku = c[0]
        if capped is not None and capped.get(sku, 0) >= r.rerank.repeat_cap:
            n_capped += 1
            continue
        boost = r._promote.get(sku) if r._promote else None
        if r._promote_nonneg and boost is None and n_plain >= need:
            continue
        if r.stock is not None:
            units = r.stock(sku)
            if units is not None and units <= 0:
                n_oos += 1
                continue
        if boost is None:
            n_plain += 1
            kept.append(c)
        else:
            kept.append((sku, c[1] + boost, c[2], c[3]))
    r.stats["capped"] += n_capped
    r.stats["out_of_stock"] += n_oos
    kept.sort(key=lambda c: -c[1])
    chosen = r._mmr(kept, k)
    if not chosen:
        return r._fallback(req, k)
    share: dict[int, float] = {}
    if len(rep.items):
        share = {i: s for i, s in zip(rep.items.tolist(), rep.share.tolist(), strict=True)}
    sess = list(dict.fromkeys(sess_idx))
    emb_s = r.item_emb[sess] if sess else None
    out = [Recommendation(c[0], round(c[1], 4), _plain_reason(r, c, share, sess, emb_s, req)) for c in chosen]
    r.stats["new_item_recs"] += sum(1 for c in chosen if c[3] < 0)
    if cap_key is not None:
        r._remember(cap_key, [x.sku for x in out])
    return out


@pytest.mark.parametrize("setup", ["catalogue", "rules", "negative_boost", "plain_lam0"])
def test_masked_rerank_matches_the_plain_one(setup: str) -> None:
    """The re-rank after ``_invoke`` (exclusion and cap masks, tuples only for the head the walk reaches,
    extras merged by position, reasons remembered per visit) gives the same items, scores, reasons and
    counters as the one-tuple-per-candidate version, request by request, through caps, cap-round resets,
    a cap change, stock-outs, promotions, suppressions, new items and long visits."""
    fast, plain = Ranker.load(), Ranker.load()
    if setup == "catalogue":
        _stage1_only(fast, plain)
    voc = fast.vocabulary
    rng = np.random.default_rng(5)
    oos = {voc[i] for i in rng.choice(3000, 150, replace=False)}
    products = [{"sku": voc[i], "name": f"item {i}"} for i in rng.choice(3000, 400, replace=False)]
    products += [{"sku": f"NEW-{j}", "name": f"new {j}", "department": "GROCERY", "category": "SOFT DRINKS",
                  "product_type": "SOFT DRINKS 12/18&15PK CAN CAR", "brand": "National", "price": 1 + j}
                 for j in range(6)]
    for r in (fast, plain):
        if setup == "plain_lam0":
            r.rerank.diversity = 0.0
        if setup in ("catalogue", "rules"):
            r.set_products(products, catalogue_only=(setup == "catalogue"))
        if setup in ("rules", "negative_boost"):
            boosts = {voc[5]: 0.5, voc[9000]: 3.0, voc[40]: 0.0, "NEW-2": 1.0}
            if setup == "negative_boost":
                boosts[voc[7]] = -2.0
            r.set_rules(promote=boosts, suppress=[voc[1], voc[2]], suppress_categories=[fast._cat_names[3]])
        r.set_stock_lookup(lambda sku: 0 if sku in oos else (None if sku[-1] in "13" else 5))
    hist = tuple((voc[i], T0 + b * 7 * DAY, 1.0) for b in range(6) for i in (3, 30, 300, 3000))
    for visit in range(5):
        session: list[str] = []
        shown: list[str] = []
        for step in range(120):
            session.append(shown[step % len(shown)] if shown and step % 3 else voc[int(rng.integers(0, 3000))])
            excl = tuple(session[-20:]) + tuple(shown[: step % 25])
            req = RecRequest(history=hist if visit % 2 else (), session=list(session), store_id="367",
                             when=T0 + 60 * DAY + step * 60, k=int(rng.integers(3, 12)), exclude=excl,
                             screen="s1" if visit < 4 else None, session_id=f"v{visit}")
            if step == 60:
                for r in (fast, plain):
                    r.reset_caps(f"v{visit}", "s1")
            if step == 90:
                for r in (fast, plain):
                    r.rerank.repeat_cap = 2
            a, b = fast.recommend(req), _plain_recommend(plain, req)
            assert a == b, (setup, visit, step)
            assert fast.stats == plain.stats
            shown = [x.sku for x in a]
    assert fast.stats["capped"] > 0 and fast.stats["out_of_stock"] > 0


def test_append_only_session_matches_copies() -> None:
    """``session_append_only``: the caller's own growing list is mapped pick by pick without a copy; answers,
    counters and state equal a ranker given a fresh copy each time, also when copies and a new list object
    for the same visit come in between."""
    own, copies = Ranker.load(), Ranker.load()
    voc = own.vocabulary
    rng = np.random.default_rng(6)
    live: list[str] = []
    for step in range(150):
        live.append(voc[int(rng.integers(0, 500))] if step % 7 else f"unknown-{step}")
        if step == 100:
            live = list(live)  # the visit's list replaced by a new object: rebuilt, same answers
        kw = {"store_id": "367", "when": T0 + 30 * DAY + step * 60, "k": 6, "session_id": "v"}
        mixed = step % 11 == 5  # now and then the same visit arrives as a plain copy
        a = own.recommend(RecRequest(session=list(live) if mixed else live, session_append_only=not mixed, **kw))
        b = copies.recommend(RecRequest(session=list(live), **kw))
        assert a == b and own.stats == copies.stats
        st, ref = own._sess_cache["v"], copies._sess_cache["v"]
        assert (st.n, st.unknown, st.last, st.first, st.skus) == (ref.n, ref.unknown, ref.last, ref.first, ref.skus)
        assert (st.src is live) == (not mixed)


def test_pool_scoring_matches_the_whole_vocabulary() -> None:
    """``catalogue_only``: ``_invoke`` scores only the catalogue pool (``_pool_scoring``). Its scores must be
    the whole-vocabulary scores at the pool, bit for bit, and ``recommend`` must give the same answers and
    counters as a ranker that scores the whole vocabulary, for warm and cold shoppers, history items in and
    outside the catalogue, promotions, stock-outs, caps, a heat refresh and a catalogue change."""
    pooled, whole = Ranker.load(), Ranker.load()
    _stage1_only(pooled, whole)
    whole._pool_scoring = lambda: None  # type: ignore[method-assign]
    voc = pooled.vocabulary
    rng = np.random.default_rng(9)
    oos = {voc[i] for i in rng.choice(3000, 100, replace=False)}

    def products(seed: int) -> list[dict[str, str]]:
        pick = np.random.default_rng(seed).choice(4000, 350, replace=False)
        return [{"sku": voc[i], "name": f"item {i}"} for i in pick]

    for r in (pooled, whole):
        r.set_products(products(1), catalogue_only=True)
        r.set_rules(promote={voc[5]: 0.5, voc[int(pooled._catalogue_idx[7])]: 2.0})  # type: ignore[index]
        r.set_stock_lookup(lambda sku: 0 if sku in oos else 5)
    n_checked = 0
    for visit in range(12):
        if visit == 4:
            heat = {voc[i]: float(rng.integers(0, 40)) for i in rng.choice(4000, 900, replace=False)}
            for r in (pooled, whole):
                r.set_item_heat(heat)
        if visit == 8:
            for r in (pooled, whole):
                r.set_products(products(2), catalogue_only=True)
        cat = pooled._catalogue_idx
        assert cat is not None
        own = list(rng.choice(cat, 6)) + list(rng.choice(4000, 10))  # bought items in and outside the pool
        hist = tuple((voc[int(i)], T0 + b * 6 * DAY, 1.0) for b in range(8) for i in own if rng.random() < 0.6)
        session: list[str] = []
        for step in range(25):
            session.append(voc[int(rng.choice(cat))] if step % 4 else voc[int(rng.integers(0, 4000))])
            req = RecRequest(history=hist if visit % 3 else (), session=session, session_append_only=True,
                             store_id="367", when=T0 + 50 * DAY + visit * 3600 + step * 60,
                             k=int(rng.integers(3, 12)), screen="s1", session_id=f"v{visit}")
            pt = pooled._pool_scoring()
            assert pt is not None and pt.pool is pooled._catalogue_idx
            if step % 5 == 0:
                a = pooled._invoke(req, pt)[0] + pt.tie
                b = (whole._invoke(req)[0] + whole._tie)[pt.pool]
                assert a.tobytes() == b.tobytes(), (visit, step)
                n_checked += 1
            assert pooled.recommend(req) == whole.recommend(req), (visit, step)
            assert pooled.stats == whole.stats
    assert n_checked == 60 and pooled.stats["out_of_stock"] > 0 and pooled.stats["capped"] > 0


def test_walk_through_many_stock_outs_matches_the_plain_one() -> None:
    """The candidate walk grows past its head (``need`` + 8 candidates) when stock-outs thin it: the same
    answers and counters as the plain version, with most of the model's best items out of stock, with and
    without MMR, with and without the catalogue pool (scored alone)."""
    for catalogue, lam in ((False, 0.3), (True, 0.3), (False, 0.0)):
        fast, plain = Ranker.load(), Ranker.load()
        if catalogue:
            _stage1_only(fast, plain)
        voc = fast.vocabulary
        rng = np.random.default_rng(11)
        oos = {voc[i] for i in range(10000) if rng.random() < 0.7}
        products = [{"sku": voc[i]} for i in rng.choice(3000, 500, replace=False)]
        for r in (fast, plain):
            r.rerank.diversity = lam
            if catalogue:
                r.set_products(products, catalogue_only=True)
            r.set_stock_lookup(lambda sku, out=oos: 0 if sku in out else (None if sku.endswith("7") else 3))
        session: list[str] = []
        for step in range(40):
            session.append(voc[int(rng.integers(0, 2000))])
            req = RecRequest(session=list(session), store_id="367", when=T0 + step * 60, k=int(rng.integers(1, 12)),
                             screen="s", session_id="v")
            assert fast.recommend(req) == _plain_recommend(plain, req), (catalogue, lam, step)
            assert fast.stats == plain.stats
        assert fast.stats["out_of_stock"] > 40 * 8
