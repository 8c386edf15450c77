"""Calibration: homography from reference points, its errors, and `shelfcast calibrate camera`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.config import load_config
from edge.vision.calibration import CalibrationError, compute_homography, floor_to_image, image_to_floor
from edge.vision.scene import SyntheticScene, aisle_layout


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(aisle_layout(), n_shoppers=0, seed=3)


def test_recovers_the_true_homography(scene: SyntheticScene) -> None:
    img, flo = scene.reference_points()
    cal = compute_homography(img.tolist(), flo.tolist())
    assert cal.rmse_cm < 0.5
    probe = np.array([[100.0, 100.0], [320.0, 240.0], [600.0, 400.0]])
    np.testing.assert_allclose(image_to_floor(cal.homography, probe), image_to_floor(scene.homography, probe),
                               atol=0.005)
    back = floor_to_image(cal.homography, image_to_floor(cal.homography, probe))
    np.testing.assert_allclose(back, probe, atol=1e-6)


def test_pixel_noise_gives_centimetre_errors_and_one_bad_point_is_reported(scene: SyntheticScene) -> None:
    img, flo = scene.reference_points()
    rng = np.random.default_rng(0)
    noisy = img + rng.normal(0, 1.0, img.shape)
    cal = compute_homography(noisy.tolist(), flo.tolist())
    assert 0.1 < cal.rmse_cm < 5
    bad = flo.copy()
    bad[3] += [1.0, 0.0]  # a point measured one metre off
    cal = compute_homography(img.tolist(), bad.tolist())
    assert cal.rmse_cm > 10 and cal.large_error
    assert int(np.argmax(cal.errors_cm)) == 3


def test_fewer_than_four_points_is_a_clear_error() -> None:
    with pytest.raises(CalibrationError, match="at least 4"):
        compute_homography([[0, 0], [10, 0], [0, 10]], [[0, 0], [1, 0], [0, 1]])


def test_collinear_points_are_a_clear_error() -> None:
    with pytest.raises(CalibrationError, match="one line"):
        compute_homography([[0, 0], [10, 10], [20, 20], [30, 30.0001]], [[0, 0], [1, 0], [0, 1], [1, 1]])
    with pytest.raises(CalibrationError, match="floor points are"):
        compute_homography([[0, 0], [10, 0], [0, 10], [10, 10]], [[0, 0], [1, 1], [2, 2], [3, 3]])


def test_duplicate_and_mismatched_points() -> None:
    with pytest.raises(CalibrationError, match="identical"):
        compute_homography([[0, 0], [10, 0], [0, 10], [0, 10], [5, 7]], [[0, 0], [1, 0], [0, 1], [0, 1.5], [3, 3]])
    with pytest.raises(CalibrationError, match="pairs"):
        compute_homography([[0, 0], [10, 0], [0, 10], [10, 10]], [[0, 0], [1, 0], [0, 1]])


CONFIG = """\
# technician's config: comments must survive the write
layout:
  zones:
  - {id: a, polygon: [[0, 0], [4, 0], [4, 4], [0, 4]]}
  shelves:
  - {id: s1, zone: a, position: [1, 0.5]}
camera:
  enabled: true   # ceiling camera
  source: synthetic
"""


def test_cli_writes_homography_into_config_and_a_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "node.yaml"
    cfg_path.write_text(CONFIG)
    preview = tmp_path / "preview.png"
    rc = main(["calibrate", "camera", "--config", str(cfg_path), "--synthetic", "--write",
               "--preview", str(preview)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reprojection error" in out and "written" in out
    text = cfg_path.read_text()
    assert "# technician's config" in text and "# ceiling camera" in text
    cfg = load_config(cfg_path)
    assert cfg.camera.homography is not None
    scene = SyntheticScene(cfg.layout, n_shoppers=0, seed=cfg.camera.synthetic_seed)
    h = np.asarray(cfg.camera.homography)
    np.testing.assert_allclose(image_to_floor(h, np.array([[320.0, 240.0]])),
                               image_to_floor(scene.homography, np.array([[320.0, 240.0]])), atol=0.01)
    img = cv2.imread(str(preview))
    assert img is not None and img.shape == (480, 640, 3)
    assert np.abs(img.astype(int) - scene.background().astype(int)).sum() > 10_000  # zones and shelves drawn
    # a second run replaces the value instead of adding another key
    assert main(["calibrate", "camera", "--config", str(cfg_path), "--synthetic", "--write", "--no-preview"]) == 0
    assert cfg_path.read_text().count("homography:") == 1


def test_cli_refuses_to_write_a_large_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "node.yaml"
    cfg_path.write_text(CONFIG)
    pts = ["0,0:0,0", "600,0:9,0", "600,400:9,5", "0,400:0,6", "300,200:3,3", "100,300:1,4"]
    args = ["calibrate", "camera", "--config", str(cfg_path), "--no-preview", "--write"]
    for p in pts:
        args += ["--point", p]
    rc = main(args)
    cap = capsys.readouterr()
    assert rc == 1
    assert "above 10 cm" in cap.err and "not written" in cap.err
    assert "homography" not in cfg_path.read_text()
    assert main([*args, "--accept-large-error"]) == 0
    assert "homography" in cfg_path.read_text()


def test_cli_errors_are_messages_not_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["calibrate", "camera", "--no-preview", "--point", "1,1:0,0", "--point", "5,1:1,0",
               "--point", "1,5:0,1"])
    err = capsys.readouterr().err
    assert rc == 2 and "at least 4" in err and "Traceback" not in err
    rc = main(["calibrate", "camera", "--no-preview", "--point", "1,1:0,0", "--point", "2,2:1,1",
               "--point", "3,3:2,2", "--point", "4,4:3,3"])
    err = capsys.readouterr().err
    assert rc == 2 and "one line" in err
    rc = main(["calibrate", "camera", "--no-preview", "--point", "1;1:0,0"])
    assert rc == 2 and "U,V:X,Y" in capsys.readouterr().err
