"""`shelfcast bench vision --json` prints the promised keys."""

from __future__ import annotations

import json

import pytest

from edge.cli import main


def test_bench_vision_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "vision", "--json", "--seconds", "12", "--shoppers", "3", "--seed", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    r = json.loads(out)
    for key in ("fps", "position_rmse_m", "zone_accuracy", "id_switches_per_10_shopper_min",
                "attribution_recall", "attribution_precision"):
        assert key in r
    assert r["fps"] > 0 and r["threads"] == 1
    assert 0 <= r["position_rmse_m"] < 0.15 and 0 < r["zone_accuracy"] <= 1
    assert r["frames"] == 180


def test_bench_vision_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "vision", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err
