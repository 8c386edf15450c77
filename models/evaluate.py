"""The evaluation harness: P1–P4 on the fixed split, baselines and the model in the same run.

The model is evaluated only through ``edge.ranking.Ranker`` (the node's API),
with re-ranking set to "pure score" (no diversity, no caps) unless asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from edge.ranking.ranker import Ranker, RecRequest, RerankConfig
from models.baselines import Context, build_all
from models.data import Prepared
from models.dataset import Problem, basket_times, build_problems
from models.metrics import summarize

log = logging.getLogger("shelfcast.models.evaluate")
K = 10


class ModelAdapter:
    """Turns a Problem into a RecRequest for the Ranker and maps skus back to product codes."""

    def __init__(self, prep: Prepared, ranker: Ranker, name: str) -> None:
        self.prep = prep
        self.ranker = ranker
        self.name = name
        self.skus = prep.meta["skus"]
        self.code = {s: i for i, s in enumerate(self.skus)}
        self.line_t = basket_times(prep)
        self.tz = ZoneInfo(prep.split.timezone)
        self._hist_cache: dict[int, list[tuple[str, float, float]]] = {}

    def request(self, pr: Problem, k: int, exclude: set[int]) -> RecRequest:
        a = self.prep.a
        key = pr.hh
        hist = self._hist_cache.get(key) if len(pr.hist_lines) else []
        if hist is None:
            hl = pr.hist_lines
            ts = self.line_t[hl] * 86400.0
            hist = [(self.skus[p], float(t), float(q)) for p, t, q in
                    zip(a["pcode"][hl].tolist(), ts.tolist(), a["quantity"][hl].tolist(), strict=True)]
            self._hist_cache = {key: hist}
        li = pr.basket_line
        when = datetime.fromtimestamp(float(self.line_t[li]) * 86400.0, self.tz)
        profile = self.prep.meta["customers"].get(self.prep.meta["households"][pr.hh])
        # the store's promotion plan for the basket's week (None without a promotions table; a second stage
        # trained without promotion columns ignores it; the baselines never see it)
        plan = self.prep.promotion_plan(int(a["store"][li]), int(a["week"][li]))
        return RecRequest(history=hist, session=[self.skus[p] for p in pr.session],
                          store_id=self.prep.meta["store_ids"][int(a["store"][li])], when=when,
                          profile=profile, exclude=[self.skus[p] for p in exclude], k=k, promotions=plan)

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        recs = self.ranker.recommend(self.request(pr, k, exclude))
        return [self.code.get(r.sku, -1) for r in recs]


def _repeat_sets(prep: Prepared, problems: list[Problem]) -> list[set[int]]:
    a = prep.a
    return [set(np.unique(a["pcode"][p.hist_lines]).tolist()) for p in problems]


def run_task(method: Any, problems: list[Problem], prep: Prepared, category: dict[int, int],
             repeat: list[set[int]], new_items: set[int]) -> dict[str, Any]:
    recs, targets = [], []
    for pr in problems:
        excl = set(pr.session)
        recs.append(method.recommend(pr, K, excl))
        targets.append(set(pr.target.tolist()))
    m: dict[str, Any] = dict(summarize(recs, targets, repeat, category, catalogue_size=prep.vocab_size))
    # P4: new items (never sold in training)
    rec_new = sum(1 for r in recs for i in r[:K] if i in new_items)
    hit_new = sum(1 for r, t in zip(recs, targets, strict=True) for i in r[:K] if i in new_items and i in t)
    tgt_new = sum(1 for t in targets for i in t if i in new_items)
    m["p4"] = {"new_item_slots_share": round(rec_new / max(1, K * len(recs)), 5), "new_item_hits": hit_new,
               "new_item_targets": tgt_new, "new_item_recall": round(hit_new / max(1, tgt_new), 5)}
    return m


def evaluate(prep: Prepared, models: dict[str, Path], *, seed: int = 0, baselines: tuple[str, ...] | None = None,
             validation: bool = False, max_p2: int | None = None, diversity: float = 0.0,
             progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Metrics per task for every baseline and every model release (dir with model.tflite + manifest)."""
    split = prep.split
    if validation:
        tlw, tfw, tlast = split.train_last_week - 6, split.train_last_week - 5, split.train_last_week
    else:
        tlw, tfw, tlast = split.train_last_week, split.test_first_week, split.test_last_week
    problems = build_problems(prep, seed=seed, train_last_week=tlw, test_first_week=tfw, test_last_week=tlast,
                              max_p2=max_p2)
    a = prep.a
    category = {int(p): int(c) for p, c in enumerate(a["cat"])}
    seen_train = np.zeros(len(prep.meta["skus"]), bool)
    train_lines = (a["week"] <= tlw) & ~a["hh_holdout"][a["hh"]]
    seen_train[a["pcode"][train_lines]] = True
    new_items = set(np.flatnonzero(~seen_train).tolist())
    repeats = {t: _repeat_sets(prep, ps) for t, ps in problems.items()}
    result: dict[str, Any] = {
        "split": {"train_weeks": [1, tlw], "test_weeks": [tfw, tlast], "validation": validation},
        "sizes": {t: len(ps) for t, ps in problems.items()},
    }
    methods: list[Any] = []
    if baselines is None or baselines:
        ctx = Context(prep, tlw)
        methods += build_all(ctx, baselines, seed=seed)
    # new products the node would know from its catalogue: those sold in the evaluation weeks
    eval_lines = (a["week"] >= tfw) & (a["week"] <= tlast)
    new_codes = np.unique(a["pcode"][eval_lines])
    new_codes = new_codes[~seen_train[new_codes]]
    attr_rows = []
    skus = prep.meta["skus"]
    av = prep.meta["attribute_values"]
    for p in new_codes.tolist():
        attr_rows.append({"sku": skus[p], "department": _val(av["department"], a["dept"][p]),
                          "category": _val(av["category"], a["cat"][p]),
                          "product_type": _val(av["product_type"], a["ptype"][p]),
                          "brand": _val(av["brand"], a["brand"][p]), "price": None})
    for name, path in models.items():
        r = Ranker.load(path, rerank=RerankConfig(diversity=diversity, repeat_cap=10**9))
        r.set_products(attr_rows)
        methods.append(ModelAdapter(prep, r, name))
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        table[m.name] = {}
        for task, ps in problems.items():
            it = progress(ps, desc=f"{m.name} {task}") if progress else ps
            table[m.name][task] = run_task(m, list(it), prep, category, repeats[task], new_items)
        log.info("%s: %s", m.name, {t: table[m.name][t].get("ndcg") for t in problems})
    result["table"] = table
    return result


def _val(values: list[str], code: int) -> str | None:
    return values[code - 1] if 0 < code <= len(values) else None
