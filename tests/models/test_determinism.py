"""Stage-1 training gives the same weights in separate processes, whatever Python's string-hash seed.

An in-process rerun cannot see per-process differences (hash seed, allocation, graph optimisation), so the
two trainings run in their own interpreters with different ``PYTHONHASHSEED`` values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge.cli import main
from models.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ("import sys; from edge.cli import main; "
         "sys.exit(main(['model', 'train', '--work', sys.argv[1], '--epochs', '2', '--no-progress', '--seed', '0']))")


def _train(work: Path, hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", TRAIN, str(work)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_weights_equal_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "in", households=120, products=600)
    base = tmp_path / "w"
    assert main(["model", "prepare", "--input", str(data), "--work", str(base), "--vocab-size", "400",
                 "--no-progress"]) == 0
    runs = []
    for seed in ("1", "2"):
        work = tmp_path / f"w{seed}"
        shutil.copytree(base, work)
        _train(work, seed)
        runs.append(work)
    with np.load(runs[0] / "examples.npz") as a, np.load(runs[1] / "examples.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"examples {k}")
    with np.load(runs[0] / "weights.npz") as a, np.load(runs[1] / "weights.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_training_restores_the_callers_graph_optimizer_options(tmp_path: Path) -> None:
    """The step runs without Grappler; the process's other graphs (quantize, stage 2) keep their options."""
    import tensorflow as tf

    from models.data import Prepared
    from models.dataset import build_examples
    from models.train import TrainConfig, train

    data = make_synthetic(tmp_path / "in", households=20, products=200)
    assert main(["model", "prepare", "--input", str(data), "--work", str(tmp_path / "w"), "--vocab-size", "100",
                 "--no-progress"]) == 0
    prep = Prepared.load(tmp_path / "w")
    ex = build_examples(prep, prep.split.train_last_week, 0)
    before = tf.config.optimizer.get_experimental_options()
    train(prep, ex, TrainConfig(epochs=1, dim=8, hidden=16))
    after = tf.config.optimizer.get_experimental_options()
    assert not after.get("disable_meta_optimizer", False)
    assert {k: v for k, v in after.items() if k != "disable_meta_optimizer"} == \
        {k: v for k, v in before.items() if k != "disable_meta_optimizer"}
