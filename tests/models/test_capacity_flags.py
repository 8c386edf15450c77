"""Stage-1 capacity flags (v12 round): `--hidden` and `--lr` next to `--dim` / `--per-household` / `--epochs`.

A flag's default must build exactly today's ``TrainConfig`` (so `model all` without it builds the same
bytes as before), and a model trained with other widths must reach the node unchanged: the tower widths the
node's graph has are the ones training used, and its history input is as wide as the training examples'.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge.cli import build_parser, main
from edge.ranking import Ranker, RecRequest
from edge.ranking.features import HIST_LEN
from edge.ranking.ranker import make_interpreter
from models.cli import train_config
from models.synthetic import make_synthetic
from models.train import TrainConfig


@pytest.mark.parametrize("command", ["train", "all"])
def test_flag_defaults_build_todays_config(command: str) -> None:
    args = build_parser().parse_args(["model", command])
    assert train_config(args) == TrainConfig()


def test_capacity_flags_reach_the_config() -> None:
    args = build_parser().parse_args(["model", "all", "--hidden", "512", "--dim", "96", "--per-household", "45",
                                      "--lr", "0.002", "--epochs", "6"])
    cfg = train_config(args)
    assert (cfg.hidden, cfg.dim, cfg.per_household, cfg.lr, cfg.epochs) == (512, 96, 45, 0.002, 6)
    assert cfg == TrainConfig(hidden=512, dim=96, per_household=45, lr=0.002, epochs=6)


def test_a_wider_model_reaches_the_node_as_trained(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "in")
    work, rel = tmp_path / "work", tmp_path / "rel"
    assert main(["model", "all", "--input", str(data), "--work", str(work), "--vocab-size", "150", "--epochs", "1",
                 "--hidden", "96", "--dim", "24", "--baselines", "", "--out", str(rel), "--no-progress",
                 "--version", "wide-1", "--seed", "0"]) == 0
    cfg = json.loads((work / "train.json").read_text())["config"]
    assert (cfg["hidden"], cfg["dim"]) == (96, 24)
    # stage 2's own stage-1 model (weeks <= last - 6) is trained with the final stage 1's configuration
    s1 = json.loads((work / "stage2" / "train.json").read_text())["config"]
    assert (s1["hidden"], s1["dim"]) == (96, 24)
    with np.load(work / "weights.npz") as w:
        assert w["tower1_kernel"].shape[1] == 96 and w["tower2_kernel"].shape[1] == 48
        assert w["in_table"].shape[1] == 24 and w["out_table"].shape[1] == 24
    with np.load(work / "stage2" / "weights.npz") as w:
        assert w["tower1_kernel"].shape[1] == 96
    # the node: the int8 graph has the trained widths, its history input is as wide as the training examples'
    with np.load(work / "examples.npz") as ex:
        trained_hist = ex["hist_items"].shape[1]
    assert trained_hist == HIST_LEN
    man = json.loads((rel / "manifest.json").read_text())
    shapes = {i["name"]: i["shape"] for i in man["feature_spec"]["inputs"]}
    assert shapes["hist_items"] == [1, trained_hist] and shapes["hist_weights"] == [1, trained_hist]
    it = make_interpreter((rel / man["model_file"]).read_bytes())
    widths = {tuple(d["shape"]) for d in it.get_tensor_details()}
    assert (1, 96) in widths and (1, 48) in widths and (1, 24) in widths  # tower1, tower2, user vector
    r = Ranker.load(rel)
    assert r.version == "wide-1" and r.quantized and r._stage2 is not None
    voc = r.vocabulary
    hist = [(voc[i], 1.5e9 + b * 7 * 86400.0, 1.0) for b in range(4) for i in (1, 2, 3)]
    recs = r.recommend(RecRequest(history=hist, session=[voc[7]], store_id="301", when=1.5e9 + 40 * 86400.0, k=5))
    assert len(recs) == 5
