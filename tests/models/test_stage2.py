"""Stage-2 training (models/stage2.py) on synthetic lists: gradient, determinism, what it learns, the file."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np

from edge.ranking.stage2 import FEATURES, forward
from models.stage2 import Lists, Stage2Config, _softmax_grad, fit, save, train_forward

F = len(FEATURES)


def _lists(n: int = 600, P: int = 30, seed: int = 0) -> Lists:
    """Lists where stage 1 (column 0) is weakly informative and one other column (rep1) strongly."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, P, F)).astype(np.float32)
    y = np.zeros((n, P), bool)
    for i in range(n):
        logit = 0.3 * X[i, :, 0] + 2.0 * X[i, :, 3]
        y[i, np.argsort(-logit)[:3]] = True
    X[:, :, 0] = np.sort(X[:, :, 0], axis=1)[:, ::-1]  # pools come best-first by stage 1
    return Lists(X, y, np.full(n, 5, np.int32), np.arange(n) // 2, np.ones(n, np.int8))


def test_softmax_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(0, 2, (4, 7))
    y = rng.random((4, 7)) < 0.3
    y[:, 0] = True
    loss, g = _softmax_grad(s, y)
    eps = 1e-6
    for i, j in ((0, 0), (1, 3), (3, 6)):
        d = s.copy()
        d[i, j] += eps
        num = (_softmax_grad(d, y)[0] - loss) / eps
        assert np.isclose(num, g[i, j], atol=1e-5)


def test_fit_is_deterministic_and_learns_the_informative_feature() -> None:
    data = _lists()
    cfg = Stage2Config(epochs=6, batch=32, lr=5e-3, hidden=8, seed=0)
    p1, rep1 = fit(data, cfg, holdout=0.25)
    p2, _ = fit(data, cfg, holdout=0.25)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
    assert rep1["epochs"][-1]["holdout_pool_hits_at10"] > rep1["holdout_pool_hits_at10_stage1"] + 0.1
    assert abs(p1["wl"][3]) > abs(p1["wl"][4])  # the informative column, not a noise one


def test_saved_file_holds_the_weight_sets_the_node_reads() -> None:
    data = _lists(n=200)
    cfg = Stage2Config(epochs=1, batch=32, hidden=4, pool=30, promotions=False)  # these lists have no promo columns
    p, _ = fit(data, cfg, holdout=0.0)
    with np.load(io.BytesIO(save({"s_": p}, cfg))) as z:
        assert tuple(z["features"].tolist()) == FEATURES
        assert int(z["pool"]) == 30
        assert "n_w1" not in z.files
        got = {k: z["s_" + k] for k in ("mean", "inv_std", "w1", "b1", "wl", "w2")}
    X = data.X[0]
    np.testing.assert_array_equal(forward(got, X), forward(p, X))


def test_node_forward_equals_the_training_graph() -> None:
    """The float32 numbers the node computes from the shipped file are the float64 training graph's."""
    data = _lists(n=200)
    cfg = Stage2Config(epochs=2, batch=32, hidden=8)
    p, _ = fit(data, cfg, holdout=0.0)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    s64 = train_forward(p64, data.X[:5].astype(np.float64))[0]
    for i in range(5):
        s32 = forward(p, data.X[i])
        assert s32.dtype == np.float32
        np.testing.assert_allclose(s32, s64[i], rtol=1e-5, atol=1e-4)
        assert np.argsort(-s32)[:10].tolist() == np.argsort(-s64[i])[:10].tolist()


def test_merge_scores_are_the_mean_of_the_sets_up_to_a_constant() -> None:
    """An ``n_ensemble`` set: one wider MLP whose scores are the mean of its members' (the node's shift drops
    the per-list constant), although each member has its own standardisation."""
    from models.stage2 import merge

    data = _lists(n=200)
    ps = [fit(data, Stage2Config(epochs=1, batch=32, hidden=4, seed=s), holdout=0.1)[0] for s in range(3)]
    assert not np.array_equal(ps[0]["mean"], ps[1]["mean"])  # different hold-outs: different standardisation
    m = merge(ps)
    assert m["w1"].shape == (F, 12) and m["w2"].shape == (12,)
    for i in range(3):
        x = data.X[i]
        d = forward(m, x) - np.mean([forward(p, x) for p in ps], axis=0)
        assert float(np.ptp(d)) < 1e-4


def test_window_lists_reach_only_the_sets_asked_for() -> None:
    """``windows`` > 1: lists of window k carry kind + 10 (k - 1); ``window_sets`` picks the sets they train."""
    from models.stage2 import fit_sets

    a, b = _lists(n=120, seed=1), _lists(n=120, seed=2)
    a.kind[:] = np.arange(120) % 2  # 0: no picks (n_), 1: picks (s_)
    b.kind[:] = 10 + np.arange(120) % 2
    both = Lists(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("X", "y", "n_target", "hh", "kind")))
    cfg = Stage2Config(epochs=1, batch=32, hidden=4, min_lists=10)
    _, rep_n = fit_sets(both, replace(cfg, window_sets="n"))
    _, rep_sn = fit_sets(both, replace(cfg, window_sets="sn"))
    _, rep_1 = fit_sets(a, cfg)
    tot = {k: v["lists"] + v["holdout_lists"] for k, v in rep_1.items()}
    assert rep_n["s_"]["lists"] + rep_n["s_"]["holdout_lists"] == tot["s_"]
    assert rep_n["n_"]["lists"] + rep_n["n_"]["holdout_lists"] == 2 * tot["n_"]
    assert rep_sn["s_"]["lists"] + rep_sn["s_"]["holdout_lists"] == 2 * tot["s_"]


def test_cli_stage2_defaults_are_the_config_defaults() -> None:
    """``models/cli.py`` spells the stage-2 defaults out (importing models.stage2 at start-up costs every CLI
    process RSS); they must stay the config's."""
    import argparse

    from models.cli import _stage2_args

    p = argparse.ArgumentParser()
    _stage2_args(p)
    a = p.parse_args([])
    d = Stage2Config()
    assert (a.stage2_windows, a.stage2_window_sets, a.stage2_n_ensemble) == (d.windows, d.window_sets, d.n_ensemble)
    assert a.stage2_promotions == d.promotions


def test_cli_split_defaults_are_the_config_defaults() -> None:
    """``model prepare|all`` spell the split's defaults out too; the shipped model (v7) was built with them, so
    ``model all`` without flags rebuilds it: vocabulary 20,000 and promotions read for stage 2."""
    import argparse

    from models.cli import _prepare_args
    from models.data import SplitConfig

    p = argparse.ArgumentParser()
    _prepare_args(p)
    a = p.parse_args([])
    d = SplitConfig()
    assert (a.vocab_size, a.train_last_week, a.test_last_week, a.timezone) == \
        (d.vocab_size, d.train_last_week, d.test_last_week, d.timezone) == (20_000, 47, 53, "America/New_York")
    assert a.promotions is None and Stage2Config().promotions  # None: read them because stage 2 uses them
