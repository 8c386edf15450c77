"""``shelfcast bench ranking --json``: invoke and full-request latency on the whole catalogue, RSS."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

from edge.cli import CommandRegistry, UserError, print_json

__all__ = ["bench", "register"]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 1)


def bench(path: str | None = None, n_invoke: int = 3000, n_requests: int = 2000, baskets: int = 30,
          seed: int = 0) -> dict[str, Any]:
    """Single thread, full vocabulary, histories of ``baskets`` baskets drawn by item popularity.

    ``recommend_*`` covers every request of a visit (the first one parses the profile history, later
    ones reuse it); ``recommend_first_of_visit_*`` only the first requests."""
    from edge.ranking.ranker import ModelError, Ranker, RecRequest, RerankConfig

    try:
        r = Ranker.load(path, rerank=RerankConfig())
    except ModelError as exc:
        raise UserError(f"cannot load the model: {exc}") from None
    rng = np.random.default_rng(seed)
    V = len(r.vocabulary)
    p = r.popularity.astype(np.float64) + 1.0
    p /= p.sum()
    t0 = 1_700_000_000.0
    profiles = [None, {"age": "45-54", "income": "50-74K", "household_size": "2", "kids_count": "0"}]
    # 64 shoppers; each visit makes 4 requests (one per pick, the session growing) with the same profile
    # history object, as the node's recommend room does
    requests = []
    first = []
    lines_total = 0
    for i in range(64):
        own = rng.choice(V, 40, replace=False, p=p)  # a shopper's repertoire
        hist: list[tuple[str, float, float]] = []
        for b in range(baskets):
            items = rng.choice(own, int(rng.integers(4, 15)), replace=False)
            hist.extend((r.vocabulary[j], t0 + b * 5 * 86400.0, 1.0) for j in items)
        history = tuple(hist)
        lines_total += len(history)
        picks = [r.vocabulary[j] for j in rng.choice(V, 4, replace=False, p=p)]
        for n in range(4):
            first.append(n == 0)
            requests.append(RecRequest(history=history, session=picks[:n], store_id="367",
                                       when=t0 + (baskets + 1) * 5 * 86400.0 + i * 600 + n * 60,
                                       profile=profiles[i % 2], k=10, session_id=f"v{i}"))
    for q in requests[:20]:  # warm up
        r.recommend(q)
    inv: list[float] = []
    for _ in range(n_invoke):
        s = time.perf_counter_ns()
        r.invoke_only()
        inv.append((time.perf_counter_ns() - s) / 1000)
    rec: list[float] = []
    rec_first: list[float] = []
    hist_now: tuple[tuple[str, float, float], ...] = ()
    fb0 = r.stats["fallback"]
    for i in range(n_requests):
        q = requests[i % len(requests)]
        if first[i % len(requests)]:  # a visit starts: a new history object, as a new check-in brings (the
            hist_now = tuple(list(q.history))  # ranker's visit caches hold 128 visits: no hit from an earlier cycle)
        # each replay of the 256 requests is a new visit (its own frequency caps): one visit replayed 8 times
        # ran out of uncapped candidates and ~19 % of the answers were the popularity fallback
        q = dataclasses.replace(q, history=hist_now, session_id=f"{q.session_id}-{i // len(requests)}")
        s = time.perf_counter_ns()
        r.recommend(q)
        dt = (time.perf_counter_ns() - s) / 1000
        rec.append(dt)
        if first[i % len(requests)]:
            rec_first.append(dt)
    size = r.path.stat().st_size if r.path is not None else 0
    return {
        "catalog_items": V,
        "invoke_p50_us": _pct(inv, 50), "invoke_p99_us": _pct(inv, 99),
        "recommend_p50_us": _pct(rec, 50), "recommend_p99_us": _pct(rec, 99),
        "recommend_first_of_visit_p50_us": _pct(rec_first, 50),
        "recommend_first_of_visit_p99_us": _pct(rec_first, 99),
        "rss_mb": round(_rss_mb(), 1),
        "fallback_share": round((r.stats["fallback"] - fb0) / max(1, n_requests), 4),
        "model_version": r.version, "model_bytes": size, "quantized_int8": bool(r.quantized),
        "history_lines_mean": round(lines_total / 64, 1), "requests_per_visit": 4, "threads": 1,
        "n_invoke": n_invoke, "n_requests": n_requests, "diversity": r.rerank.diversity,
    }


def _cmd(args: argparse.Namespace) -> int:
    for flag, v in (("--n-invoke", args.n_invoke), ("--n-requests", args.n_requests), ("--baskets", args.baskets)):
        if v < 1:
            raise UserError(f"{flag} must be at least 1 (got {v}); the defaults are 3000 invokes, 2000 requests "
                            "and 30 baskets")
    res = bench(args.model, n_invoke=args.n_invoke, n_requests=args.n_requests, baskets=args.baskets)
    if args.json:
        print_json(res)
    else:
        for k, v in res.items():
            sys.stdout.write(f"{k:22s} {v}\n")
    return 0


def register(reg: CommandRegistry) -> None:
    p = reg.subcommand("bench", "ranking", "model invoke and recommend latency (µs), RSS; full catalogue", _cmd)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--model", default=None, help="model dir or .tflite (default: the bundled model)")
    p.add_argument("--n-invoke", type=int, default=3000)
    p.add_argument("--n-requests", type=int, default=2000)
    p.add_argument("--baskets", type=int, default=30, help="baskets per synthetic shopper history")
