"""Training the second stage (``edge.ranking.stage2``): data from held-out stage-1 scores, a listwise fit.

The standard two-stage recipe: a stage-1 release trained on weeks <= W scores the baskets of weeks
W+1 .. W+6 it never saw, through the node's own ``Ranker`` (so the features are the node's numbers);
each basket gives one list (the stage-1 pool) with the basket's items as positives. The MLP is fitted
with a softmax (listwise) loss on those lists, in float64 numpy with Adam: deterministic for a seed,
no TensorFlow. The lists mirror the evaluation tasks: next basket (P1-like), in-store with 3 revealed
items (P2-like), and the same with the history dropped (cold shoppers; held-out households are never
used, they stay unseen like in stage 1).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.ranking.ranker import Ranker, RerankConfig
from edge.ranking.stage2 import FEATURES, PROMO_FEATURES, Stage2, forward
from models.data import Prepared
from models.dataset import Problem, build_problems

STAGE2_FILE = "stage2.npz"
TEMPERATURES = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclass
class Stage2Config:
    pool: int = 100
    hidden: int = 32
    epochs: int = 12
    batch: int = 64  # lists per step
    lr: float = 2e-3
    l2: float = 1e-4
    max_p2: int = 12_000  # P2-like lists (seeded sample)
    cold_share: float = 0.15  # extra lists with the history dropped, as a share of the warm ones
    seed: int = 0
    min_lists: int = 50  # fewer lists with a positive in the pool: no weight set (stage 1 serves those)
    # v7: list windows (window k: a stage-1 model on weeks <= last - 6k scores the 6 weeks after it; 1 = v5),
    # which sets also learn from the windows beyond the first, and how many seeds the ``n_`` set averages
    windows: int = 1
    window_sets: str = "sn"
    n_ensemble: int = 1
    # v9: the store's weekly promotion plan as two extra columns (on_display, in_mailer); needs the prepared
    # data's promotions table (``build`` turns it off, logged, without one). On by default since v7 (2026-12-01):
    # validation P2 recall +0.6 %, P3b +4.5 %, P1 +0.6 % over the same stage 1 (model card, v13 round)
    promotions: bool = True

    def feature_names(self) -> tuple[str, ...]:
        return FEATURES + PROMO_FEATURES if self.promotions else FEATURES


# which lists train which weight set: ``s_`` requests with picks in the session (warm or cold shoppers),
# ``n_`` requests without picks from shoppers with a history. Cold shoppers without picks keep stage 1:
# on validation the re-ranker cost P3a (0.0828 -> 0.0820) with nothing to go on but popularity.
SETS: dict[str, tuple[int, ...]] = {"s_": (1, 3), "n_": (0,)}


@dataclass
class Lists:
    X: np.ndarray  # [N, P, F] float32
    y: np.ndarray  # [N, P] bool: in the target basket
    n_target: np.ndarray  # [N] distinct target items (recall's denominator, pool or not)
    hh: np.ndarray  # [N] household (for a grouped hold-out)
    kind: np.ndarray  # [N] 0 P1-like, 1 P2-like, 2 cold, 3 cold + session


def stage2_problems(prep: Prepared, first_week: int, last_week: int, cfg: Stage2Config
                    ) -> list[tuple[int, Problem]]:
    """(kind, problem) for the weeks ``first_week`` .. ``last_week`` with history up to ``first_week - 1``:
    0 next basket without picks (P1's first baskets and P2's baskets unrevealed), 1 three revealed items
    (P2), 2 / 3 the same with the history dropped (cold shoppers)."""
    ps = build_problems(prep, seed=cfg.seed + 17, train_last_week=first_week - 1, test_first_week=first_week,
                        test_last_week=last_week, max_p2=cfg.max_p2)
    out: list[tuple[int, Problem]] = [(0, p) for p in ps["P1"]] + [(1, p) for p in ps["P2"]]
    out += [(0, Problem(p.hh, p.hist_lines, [], np.union1d(p.target, p.session), p.basket_line))
            for p in ps["P2"]]
    rng = np.random.default_rng(cfg.seed + 23)
    warm = [(k, p) for k, p in out]
    n_cold = int(cfg.cold_share * len(warm))
    for j in rng.choice(len(warm), min(n_cold, len(warm)), replace=False).tolist():
        k, p = warm[j]
        out.append((k + 2, Problem(p.hh, p.hist_lines[:0], list(p.session), p.target, p.basket_line)))
    return out


def subset(data: Lists, mask: np.ndarray) -> Lists:
    return Lists(data.X[mask], data.y[mask], data.n_target[mask], data.hh[mask], data.kind[mask])


def collect(prep: Prepared, release: Path, problems: list[tuple[int, Problem]], pool: int,
            progress: Callable[..., Any] | None = None, promotions: bool = False) -> Lists:
    """Stage-1 pools and features of every problem, scored by ``release`` through the node's Ranker
    (``promotions``: with the promotion columns, from the request the harness would send)."""
    from models.evaluate import ModelAdapter

    r = Ranker.load(release, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    r._stage2 = None  # stage-1 scores only
    ad = ModelAdapter(prep, r, "stage1")
    s2 = Stage2.for_features(r, pool, promo=promotions)
    vocab_of = prep.a["vocab_of"]
    N = len(problems)
    X = np.zeros((N, pool, s2.n_features), np.float32)
    y = np.zeros((N, pool), bool)
    n_t = np.zeros(N, np.int32)
    hh = np.zeros(N, np.int64)
    kind = np.zeros(N, np.int8)
    it = progress(problems, desc="stage-2 lists") if progress else problems
    for n, (kd, pr) in enumerate(it):
        req = ad.request(pr, 10, set(pr.session))
        scores, _, rep, _, st = r._invoke(req)
        scores = scores + r._tie
        pl, feats = s2.features(scores, rep, list(st.last), r._heat, promotions=req.promotions)
        m = len(pl)
        X[n, :m] = feats
        tgt = vocab_of[pr.target]
        y[n, :m] = np.isin(pl, tgt[tgt >= 0])
        n_t[n] = len(pr.target)
        hh[n] = pr.hh
        kind[n] = kd
    return Lists(X, y, n_t, hh, kind)


def fit_sets(data: Lists, cfg: Stage2Config, log: Callable[[str], None] | None = None
             ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """One weight set per ``SETS`` entry (skipped when it has fewer than ``cfg.min_lists`` usable lists)."""
    sets: dict[str, dict[str, np.ndarray]] = {}
    reports: dict[str, Any] = {}
    for pre, kinds in SETS.items():
        # kind + 10 (k - 1): a list of window k; windows beyond the first only for the sets in ``window_sets``
        sub = subset(data, np.isin(data.kind % 10, kinds) & ((data.kind < 10) | (pre[0] in cfg.window_sets)))
        if int(sub.y.any(axis=1).sum()) < cfg.min_lists:
            reports[pre] = {"skipped": "too few lists with a basket item in the pool"}
            continue
        if pre == "n_" and cfg.n_ensemble > 1:
            fits = [fit(sub, replace(cfg, seed=cfg.seed + j), log=log) for j in range(cfg.n_ensemble)]
            sets[pre], reports[pre] = merge([f[0] for f in fits]), {"ensemble": [f[1] for f in fits]}
        else:
            sets[pre], reports[pre] = fit(sub, cfg, log=log)
    return sets, reports


def build(prep: Prepared, work: Path, last_week: int, cfg: Stage2Config, *, stage1_cfg: Any = None,
          progress: Callable[..., Any] | None = None, log: Callable[[str], None] | None = None) -> Path | None:
    """The whole second stage for a final model trained on weeks <= ``last_week``: a stage-1 model on weeks
    <= ``last_week - 6`` (``work``/stage2/), its lists on the 6 weeks after, the fit. Writes
    ``work``/stage2.npz + stage2.json and returns the npz path (None: no weight set could be fitted)."""
    from models.dataset import build_examples
    from models.export import export
    from models.quantize import convert
    from models.train import TrainConfig, save_weights, train

    s1_last = last_week - 6
    tcfg = stage1_cfg or TrainConfig(seed=cfg.seed)
    if cfg.promotions and prep.promo is None:
        if log:
            log("stage 2: no promotions table in the prepared data, built without promotion columns "
                "(prepare with `shelfcast model prepare --promotions`, or run `model all --stage2-promotions`)")
        cfg = replace(cfg, promotions=False)
    parts: list[Lists] = []
    for k in range(1, max(1, cfg.windows) + 1):
        w_last = last_week - 6 * k  # window k's stage 1 trains on weeks <= w_last and scores the 6 weeks after
        sub = work / ("stage2" if k == 1 else f"stage2_w{k}")
        sub.mkdir(parents=True, exist_ok=True)
        ex = build_examples(prep, w_last, tcfg.seed, per_household=tcfg.per_household, p_cold=tcfg.p_cold,
                            p_session=tcfg.p_session, progress=progress, p_cold_no_profile=tcfg.p_cold_no_profile)
        model = train(prep, ex, tcfg, progress=progress, last_week=w_last)
        save_weights(model, sub, tcfg, {"examples": len(ex), "train_last_week": w_last, "stage2_stage1": True})
        convert(sub / "weights.npz", ex, sub, seed=tcfg.seed)
        export(prep, sub, sub / "release_int8", which="int8", source="stage-2 stage 1")
        problems = stage2_problems(prep, w_last + 1, w_last + 6, cfg)
        part = collect(prep, sub / "release_int8", problems, cfg.pool, progress=progress,
                       promotions=cfg.promotions)
        part.kind += np.int8(10 * (k - 1))
        parts.append(part)
    data = parts[0] if len(parts) == 1 else Lists(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("X", "y", "n_target", "hh", "kind")))
    sets, reports = fit_sets(data, cfg, log=log)
    for f in ("stage2.npz", "stage2.json"):
        (work / f).unlink(missing_ok=True)
    if not sets:
        return None
    (work / "stage2.npz").write_bytes(save(sets, cfg))
    info = {"stage1_train_last_week": s1_last, "list_weeks": [s1_last + 1, last_week], "lists": len(data.kind),
            "windows": [[last_week - 6 * k + 1, last_week - 6 * k + 6] for k in range(1, max(1, cfg.windows) + 1)],
            "config": {k: v for k, v in cfg.__dict__.items()}, "fit": reports}
    (work / "stage2.json").write_text(json.dumps(info, indent=1))
    return work / "stage2.npz"


def attach_from_work(work: Path, release: Path) -> bool:
    """Attach ``work``/stage2.npz (if built) to a release directory; True if attached."""
    if not (work / "stage2.npz").exists():
        return False
    info = json.loads((work / "stage2.json").read_text())
    attach(release, (work / "stage2.npz").read_bytes(),
           {k: info[k] for k in ("stage1_train_last_week", "list_weeks", "lists", "config")})
    return True


def train_forward(p: dict[str, np.ndarray], xb: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training graph (float64, batched [B, P, F]): scores and the activations backprop needs. The
    node's ``edge.ranking.stage2.forward`` is the same formula in float32 (a test compares them)."""
    xn = (xb - p["mean"]) * p["inv_std"]
    a = xn @ p["w1"] + p["b1"]
    h = np.maximum(a, 0.0)
    return xn @ p["wl"] + h @ p["w2"], xn, a, h


def _softmax_grad(s: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Listwise loss (mean over lists of -Σ_pos log p / n_pos) and its gradient w.r.t. the scores."""
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    p = e / e.sum(axis=1, keepdims=True)
    npos = y.sum(axis=1, keepdims=True)
    t = y / npos
    loss = float(-(t * np.log(np.maximum(p, 1e-300))).sum(axis=1).mean())
    return loss, (p - t) / len(s)


def fit(data: Lists, cfg: Stage2Config, holdout: float = 0.1, log: Callable[[str], None] | None = None
        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the stage-2 MLP (float64 Adam, seeded); returns (params for ``forward``, training report).

    Lists without any positive in the pool carry no gradient and are skipped. ``holdout`` (a share of
    households) is scored every epoch for the report; the returned params are the last epoch's."""
    rng = np.random.default_rng(cfg.seed)
    keep = data.y.any(axis=1)
    X = data.X[keep].astype(np.float64)
    y = data.y[keep].astype(np.float64)
    hh = data.hh[keep]
    uh = np.unique(hh)
    held = np.isin(hh, rng.choice(uh, int(holdout * len(uh)), replace=False)) if holdout > 0 \
        else np.zeros(len(hh), bool)
    Xt, yt = X[~held], y[~held]
    Fn = X.shape[2]
    flat = Xt.reshape(-1, Fn)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    inv = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 0.0)
    H = cfg.hidden
    p: dict[str, np.ndarray] = {
        "mean": mean, "inv_std": inv,
        "w1": rng.normal(0.0, 1.0 / np.sqrt(Fn), (Fn, H)), "b1": np.zeros(H),
        "wl": np.zeros(Fn), "w2": np.zeros(H),
    }
    # start from the stage-1 order at the temperature that fits the lists best: wl · xn = c (s1_rel - mean)
    sub = Xt[:: max(1, len(Xt) // 2000), :, 0]
    ysub = yt[:: max(1, len(Xt) // 2000)]
    c = min(TEMPERATURES, key=lambda c: _softmax_grad(c * sub, ysub)[0])
    p["wl"][0] = c * std[0]
    names = ("w1", "b1", "wl", "w2")
    m1 = {k: np.zeros_like(p[k]) for k in names}
    m2 = {k: np.zeros_like(p[k]) for k in names}
    step = 0
    report: dict[str, Any] = {"lists": len(Xt), "holdout_lists": int(held.sum()), "s1_temperature": c,
                              "epochs": []}

    def hits(params: dict[str, np.ndarray], Xe: np.ndarray, ye: np.ndarray) -> float:
        s = np.stack([forward(params, x) for x in Xe]) if len(Xe) else np.zeros((0, 0))
        if not len(s):
            return 0.0
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        return float(np.take_along_axis(ye, top, axis=1).sum() / max(ye.sum(), 1))

    base = hits(p, X[held], y[held])
    report["holdout_pool_hits_at10_stage1"] = round(base, 5)
    for ep in range(cfg.epochs):
        order = rng.permutation(len(Xt))
        tot = 0.0
        for lo in range(0, len(order), cfg.batch):
            b = order[lo: lo + cfg.batch]
            xb, yb = Xt[b], yt[b]
            s, xn, a, h = train_forward(p, xb)
            loss, ds = _softmax_grad(s, yb)
            tot += loss * len(b)
            dh = ds[..., None] * p["w2"] * (a > 0)
            g = {"wl": np.einsum("bpf,bp->f", xn, ds), "w2": np.einsum("bph,bp->h", h, ds),
                 "w1": np.einsum("bpf,bph->fh", xn, dh), "b1": dh.sum(axis=(0, 1))}
            g["w1"] += cfg.l2 * p["w1"]
            g["w2"] += cfg.l2 * p["w2"]
            step += 1
            for k in names:
                m1[k] = 0.9 * m1[k] + 0.1 * g[k]
                m2[k] = 0.999 * m2[k] + 0.001 * g[k] ** 2
                p[k] = p[k] - cfg.lr * (m1[k] / (1 - 0.9 ** step)) / (np.sqrt(m2[k] / (1 - 0.999 ** step)) + 1e-8)
        row = {"epoch": ep + 1, "loss": round(tot / len(Xt), 5)}
        if held.any():
            row["holdout_pool_hits_at10"] = round(hits(p, X[held], y[held]), 5)
        report["epochs"].append(row)
        if log:
            log(json.dumps(row))
    out = {k: v.astype(np.float32) for k, v in p.items()}
    return out, report


def merge(sets: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One weight set whose scores are the mean of ``sets``' scores (same columns, any standardisation):
    hidden layers side by side, each re-expressed on the first set's standardisation, so the node runs one
    wider MLP. Exact up to a constant per list (the node's shift removes it) and float32 rounding:
    (x - m_k) i_k = xn (i_k / i) + (m - m_k) i_k with xn = (x - m) i."""
    m, i = sets[0]["mean"].astype(np.float64), sets[0]["inv_std"].astype(np.float64)
    K = len(sets)
    ratio = [np.where(i > 0, p["inv_std"] / np.where(i > 0, i, 1.0), 0.0) for p in sets]
    w1 = np.concatenate([r[:, None] * p["w1"] for r, p in zip(ratio, sets, strict=True)], axis=1)
    b1 = np.concatenate([p["b1"] + ((m - p["mean"]) * p["inv_std"]) @ p["w1"] for p in sets])
    wl = sum(r * p["wl"] for r, p in zip(ratio, sets, strict=True)) / K
    w2 = np.concatenate([p["w2"] for p in sets]) / K
    return {"mean": m.astype(np.float32), "inv_std": i.astype(np.float32), "w1": w1.astype(np.float32),
            "b1": b1.astype(np.float32), "wl": np.asarray(wl, np.float32), "w2": w2.astype(np.float32)}


def save(sets: dict[str, dict[str, np.ndarray]], cfg: Stage2Config) -> bytes:
    """The ``stage2.npz`` bytes a release ships: weight sets by prefix (``s_`` with session picks,
    ``n_`` without), feature names, pool size."""
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {pre + k: v.astype(np.float32) for pre, params in sets.items()
                                     for k, v in params.items()}
    arrays["features"] = np.asarray(cfg.feature_names())
    arrays["pool"] = np.asarray(cfg.pool, np.int32)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def attach(release: Path, data: bytes, info: dict[str, Any]) -> None:
    """Add ``stage2.npz`` to a release directory and list it (sha256, training info) in its manifest."""
    (release / STAGE2_FILE).write_bytes(data)
    man_path = release / "manifest.json"
    man = json.loads(man_path.read_text())
    man["stage2_file"] = STAGE2_FILE
    man["stage2_sha256"] = hashlib.sha256(data).hexdigest()
    with np.load(io.BytesIO(data)) as z:
        names = [str(x) for x in z["features"].tolist()]
    man["stage2"] = {"features": names, **info}
    man_path.write_text(json.dumps(man, separators=(",", ":")))
    Ranker.load(release)  # refuses its own output if anything is inconsistent
