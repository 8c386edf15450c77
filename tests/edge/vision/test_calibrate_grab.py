"""The guide's camera calibration, step by step: "read their pixels in a snapshot" needs a snapshot. There was
no command to take one (the preview frame is grabbed only once the points are given); `calibrate camera --grab`
takes it (and a copy with a pixel grid), and the same file then serves as --snapshot for the calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.config import load_config
from edge.vision.scene import SyntheticScene

CAMERA = {"enabled": True, "source": "synthetic"}  # demo_yaml(tmp_path, camera=CAMERA): the grab's config


def test_grab_a_snapshot_then_calibrate_on_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              demo_yaml: Any) -> None:
    cfg_path = demo_yaml(tmp_path, camera=CAMERA)
    snap = tmp_path / "snapshot.png"
    assert main(["calibrate", "camera", "--config", str(cfg_path), "--grab", str(snap)]) == 0  # old code: exit 2
    out = capsys.readouterr().out
    img = cv2.imread(str(snap))
    grid = cv2.imread(str(tmp_path / "snapshot-grid.png"))
    assert img is not None and grid is not None
    assert img.shape == grid.shape == (480, 640, 3)
    assert not np.array_equal(img, grid)  # the grid is drawn on the copy only
    assert f"--config {cfg_path} --snapshot {snap} --point U,V:X,Y" in out and "--write" in out, out
    assert "homography" not in cfg_path.read_text()  # a grab writes nothing into the config

    # the technician reads the marked points' pixels off the snapshot; the synthetic scene knows them exactly
    cfg = load_config(cfg_path)
    scene = SyntheticScene(cfg.layout, n_shoppers=0, seed=cfg.camera.synthetic_seed, width=cfg.camera.width,
                           height=cfg.camera.height, noise_sigma=0.0)
    px, floor = scene.reference_points()
    points = [f"--point={u:.1f},{v:.1f}:{x:g},{y:g}" for (u, v), (x, y) in zip(px[:6], floor[:6], strict=True)]
    preview = tmp_path / "camera-calibration.png"
    rc = main(["calibrate", "camera", "--config", str(cfg_path), "--snapshot", str(snap), "--preview", str(preview),
               *points, "--write"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert load_config(cfg_path).camera.homography is not None and preview.exists()
    assert "sudo systemctl restart shelfcast" in out, out  # the running node keeps its old homography until then


def test_grab_mistakes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_yaml: Any) -> None:
    cfg_path = demo_yaml(tmp_path, camera=CAMERA)
    assert main(["calibrate", "camera", "--grab", str(tmp_path / "s.png")]) == 2
    assert "--grab needs --config" in capsys.readouterr().err
    assert main(["calibrate", "camera", "--config", str(cfg_path), "--grab", str(tmp_path / "s.png"),
                 "--point", "1,2:3,4"]) == 2
    assert "--grab only takes the snapshot" in capsys.readouterr().err
    assert main(["calibrate", "camera", "--config", str(cfg_path), "--grab", str(tmp_path / "no" / "s.png")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["calibrate", "camera", "--config", str(cfg_path)]) == 2
    assert "--grab snapshot.png" in capsys.readouterr().err  # the error for no points says how to get them
