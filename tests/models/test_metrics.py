"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from models.metrics import (
    average_precision_at_k,
    f1_at_k,
    hit_at_k,
    intra_list_diversity,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    summarize,
)

REC = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
TARGET = {"a", "c", "x"}  # hits at ranks 1 and 3; "x" is never recommended


def test_precision_recall_f1() -> None:
    assert precision_at_k(REC, TARGET) == pytest.approx(0.2)
    assert recall_at_k(REC, TARGET) == pytest.approx(2 / 3)
    p, r = 0.2, 2 / 3
    assert f1_at_k(REC, TARGET) == pytest.approx(2 * p * r / (p + r))
    assert recall_at_k(REC, set()) == 0.0


def test_average_precision() -> None:
    # hits at 1 and 3: (1/1 + 2/3) / min(3, 10)
    assert average_precision_at_k(REC, TARGET) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(["z"] * 10, TARGET) == 0.0


def test_ndcg() -> None:
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(REC, TARGET) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "c", "x"], TARGET, k=3) == pytest.approx(1.0)
    # a duplicate in the list does not count twice
    assert ndcg_at_k(["a", "a"], {"a", "b"}, k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_hit_rate() -> None:
    assert hit_at_k(REC, TARGET) == 1.0
    assert hit_at_k(REC, {"q"}) == 0.0
    assert hit_at_k(REC, {"j"}, k=9) == 0.0


def test_intra_list_diversity() -> None:
    cat = {"a": 1, "b": 1, "c": 2}
    # pairs: ab same, ac diff, bc diff -> 2/3
    assert intra_list_diversity(["a", "b", "c"], cat) == pytest.approx(2 / 3)
    assert intra_list_diversity(["a"], cat) == 0.0


def test_summarize_repeat_explore_and_coverage() -> None:
    recs = [["a", "b"], ["c", "d"]]
    targets = [{"a", "z"}, {"d"}]
    repeat = [{"a"}, set()]
    m = summarize(recs, targets, repeat, {"a": 1, "b": 2, "c": 1, "d": 1}, catalogue_size=8, k=2)
    assert m["n"] == 2
    assert m["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["repeat_recall"] == pytest.approx(1.0)  # only request 1 has repeat targets: a found
    assert m["explore_recall"] == pytest.approx((0.0 + 1.0) / 2)  # z missed, d found
    assert m["coverage"] == pytest.approx(4 / 8)
    assert m["diversity"] == pytest.approx(0.5)
