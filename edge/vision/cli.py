"""``shelfcast calibrate camera`` and ``shelfcast bench vision``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.cli import CommandRegistry, UserError, positive_float, print_json, sudo_user
from edge.config import NodeConfig, default_config, load_config, parse_config
from edge.vision.calibration import (
    LARGE_ERROR_CM,
    CalibrationError,
    compute_homography,
    draw_pixel_grid,
    draw_preview,
)
from edge.vision.config_edit import replace_keeping_owner, set_homography, yaml_number
from edge.vision.scene import SyntheticScene
from edge.vision.sources import OpenCVSource, SourceError, describe_source, source_kind

__all__ = ["register"]

_POINT_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*[:=]\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*$")


def register(reg: CommandRegistry) -> None:
    p = reg.subcommand("calibrate", "camera",
                       "compute the camera's image->floor homography from >= 4 reference points", _calibrate)
    p.add_argument("--config", type=Path, help="node config (layout for the preview; --write updates it)")
    p.add_argument("--point", action="append", default=[], metavar="U,V:X,Y",
                   help="a reference point: image pixel U,V is floor position X,Y metres (repeat, >= 4)")
    p.add_argument("--points", type=Path, metavar="FILE",
                   help="YAML/JSON list of {image: [u, v], floor: [x, y]} reference points")
    p.add_argument("--synthetic", action="store_true",
                   help="use the synthetic scene's known reference points (demo and tests)")
    p.add_argument("--grab", type=Path, metavar="PNG",
                   help="only grab one frame from camera.source of --config into PNG (and PNG-grid.png with a "
                   "pixel grid) to read the reference points' pixels from; then run again with --point and "
                   "--snapshot PNG")
    p.add_argument("--snapshot", type=Path, help="image to draw the preview on (default: grab one frame)")
    p.add_argument("--preview", type=Path, default=Path("camera-calibration.png"),
                   help="where to write the preview PNG (default: %(default)s)")
    p.add_argument("--no-preview", action="store_true", help="do not grab a snapshot or write a preview")
    p.add_argument("--write", action="store_true", help="write the homography into --config")
    p.add_argument("--max-error-cm", type=positive_float, default=LARGE_ERROR_CM,
                   help="reprojection RMSE above which the result is refused for --write (default: %(default)s)")
    p.add_argument("--accept-large-error", action="store_true", help="write even above --max-error-cm")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    b = reg.subcommand("bench", "vision",
                       "positioning, tracking and attribution accuracy + frames/s on synthetic scenes", _bench)
    b.add_argument("--json", action="store_true", help="print JSON")
    b.add_argument("--seconds", type=float, default=300.0, help="simulated seconds (default: %(default)s)")
    b.add_argument("--shoppers", type=int, default=5, help="shoppers in the aisle (default: %(default)s)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--width", type=int, default=640)
    b.add_argument("--height", type=int, default=480)
    b.add_argument("--detect-width", type=int, default=320)


# -- calibrate ----------------------------------------------------------------------


def _parse_points(args: argparse.Namespace, cfg: NodeConfig) -> tuple[list[list[float]], list[list[float]]]:
    img: list[list[float]] = []
    flo: list[list[float]] = []
    for s in args.point:
        m = _POINT_RE.match(s)
        if not m:
            raise UserError(f"--point {s!r}: expected U,V:X,Y (image pixels : floor metres), e.g. 120,80:0.0,0.0")
        u, v, x, y = (float(g) for g in m.groups())
        img.append([u, v])
        flo.append([x, y])
    if args.points is not None:
        try:
            data = yaml.safe_load(args.points.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read {args.points}: {exc}") from None
        if isinstance(data, dict):
            data = data.get("points")
        if not isinstance(data, list):
            raise UserError(f"{args.points}: expected a list of {{image: [u, v], floor: [x, y]}}")
        for i, d in enumerate(data):
            try:
                img.append([float(d["image"][0]), float(d["image"][1])])
                flo.append([float(d["floor"][0]), float(d["floor"][1])])
            except (KeyError, TypeError, IndexError, ValueError):
                raise UserError(f"{args.points}: point {i} must look like {{image: [u, v], floor: [x, y]}}") from None
    if args.synthetic:
        scene = _scene(cfg)
        i_pts, f_pts = scene.reference_points()
        img += i_pts.tolist()
        flo += f_pts.tolist()
    return img, flo


def _scene(cfg: NodeConfig) -> SyntheticScene:
    return SyntheticScene(cfg.layout, n_shoppers=0, seed=cfg.camera.synthetic_seed, width=cfg.camera.width,
                          height=cfg.camera.height, noise_sigma=0.0)


def _snapshot(args: argparse.Namespace, cfg: NodeConfig, hint: str = "or pass --snapshot FILE, or --no-preview"
              ) -> np.ndarray:
    if args.snapshot is not None:
        img = cv2.imread(str(args.snapshot), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read the snapshot image {args.snapshot}; give a PNG or JPEG file")
        return img
    if source_kind(cfg.camera.source) == "synthetic":
        return _scene(cfg).background()
    src = OpenCVSource(cfg.camera.source, width=cfg.camera.width, height=cfg.camera.height, fps=cfg.camera.fps,
                       timeout_s=cfg.camera.stream_timeout_s)
    try:
        src.open()
        r = src.read()
    except SourceError as exc:
        raise UserError(f"{exc}; {hint}") from None
    finally:
        src.close()
    if r is None:
        raise UserError(f"camera {describe_source(cfg.camera.source)} gave no frame; {hint}")
    return r[0]


def write_private_image(path: Path, img: np.ndarray) -> bool:
    """Write a camera frame (or an image drawn on one) readable by its owner only (0600), whatever the umask, also
    over an older readable file; under ``sudo`` the file goes to the technician who ran it, so their image viewer
    opens it without root. False when the image cannot be encoded for that file name or the file written."""
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", img)
    except cv2.error:
        return False
    if not ok:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not change an existing file's
        owner = sudo_user()
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(buf.tobytes())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _grab(args: argparse.Namespace) -> int:
    """Step one of a calibration: a snapshot to read the marked floor points' pixels from."""
    if args.config is None:
        raise UserError("--grab needs --config PATH (the node config whose camera.source to grab from)")
    if args.point or args.points is not None or args.synthetic or args.write:
        raise UserError("--grab only takes the snapshot; read the points' pixels from it, then run again with "
                        "--point U,V:X,Y ... --snapshot FILE")
    cfg = load_config(args.config)
    args.snapshot = None
    # a camera the running node holds cannot be opened twice
    snap = _snapshot(args, cfg, "if the node is running, it holds the camera: `sudo systemctl stop shelfcast` "
                     "first, `sudo systemctl start shelfcast` after")
    grid_path = args.grab.with_name(f"{args.grab.stem}-grid.png")
    if not (write_private_image(args.grab, snap) and write_private_image(grid_path, draw_pixel_grid(snap))):
        raise UserError(f"cannot write {args.grab}; check the directory exists and is writable (give a .png path)")
    height, width = snap.shape[:2]
    if args.json:
        print_json({"snapshot": str(args.grab), "grid": str(grid_path), "width": width, "height": height})
        return 0
    print(f"snapshot: {args.grab} ({width}x{height} px); with a pixel grid: {grid_path}")
    print("read the pixel U,V of each marked floor point (the grid, or any image viewer's cursor position), then:")
    print(f"  sudo shelfcast calibrate camera --config {args.config} --snapshot {args.grab} "
          "--point U,V:X,Y --point U,V:X,Y ... --write")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if args.grab is not None:
        return _grab(args)
    if args.write and args.config is None:
        raise UserError("--write needs --config PATH (the node config file to update)")
    cfg = load_config(args.config) if args.config is not None else default_config()
    img, flo = _parse_points(args, cfg)
    if not img:
        raise UserError("no reference points: give at least 4 with --point U,V:X,Y (or --points FILE); to read "
                        "their pixels, grab a snapshot first: `shelfcast calibrate camera --config FILE --grab "
                        "snapshot.png`")
    try:
        cal = compute_homography(img, flo)
    except CalibrationError as exc:
        raise UserError(str(exc)) from None
    h = cal.as_config()
    result: dict[str, Any] = {
        "homography": h,
        "reprojection_rmse_cm": round(cal.rmse_cm, 2),
        "reprojection_max_cm": round(cal.max_error_cm, 2),
        "errors_cm": [round(e, 2) for e in cal.errors_cm],
        "points": cal.n_points,
        "inliers": cal.inliers,
        "large_error": cal.rmse_cm > args.max_error_cm,
        "written": False,
        "preview": None,
    }
    warnings: list[str] = []
    if cal.n_points == 4:
        warnings.append("with exactly 4 points the error is always ~0 and proves nothing; add 2 or more "
                        "points to check the calibration")
    if result["large_error"]:
        warnings.append(f"reprojection error {cal.rmse_cm:.1f} cm is above {args.max_error_cm:g} cm: re-measure "
                        "the points (worst: point "
                        f"{int(np.argmax(cal.errors_cm)) + 1}, {cal.max_error_cm:.1f} cm)")
    if not args.no_preview:
        snap = _snapshot(args, cfg)
        preview = draw_preview(snap, np.asarray(h), cfg.layout, img, flo)
        if not write_private_image(args.preview, preview):
            raise UserError(f"cannot write the preview to {args.preview}; check the directory exists")
        result["preview"] = str(args.preview)
    if args.write:
        if result["large_error"] and not args.accept_large_error:
            warnings.append("not written: fix the points, or pass --accept-large-error")
        else:
            warnings += _write_homography(args.config, h)
            result["written"] = True
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    code = 1 if args.write and not result["written"] else 0
    if args.json:
        print_json({**result, "warnings": warnings})
        return code
    print(f"reprojection error: {cal.rmse_cm:.2f} cm RMS, {cal.max_error_cm:.2f} cm max over {cal.n_points} points")
    if result["preview"]:
        print(f"preview: {result['preview']}")
    if result["written"]:
        print(f"homography written to {args.config}; the node reads it when it starts: "
              "`sudo systemctl restart shelfcast`")
    else:
        print("add this to the camera section of the config:")
        print(homography_yaml(h))
    return code


def homography_yaml(h: list[list[float]]) -> str:
    rows = ",\n".join("    [" + ", ".join(yaml_number(v) for v in row) + "]" for row in h)
    return f"camera:\n  homography: [\n{rows}\n  ]"


def _write_homography(path: Path, h: list[list[float]]) -> list[str]:
    """Put ``camera.homography`` into the YAML file, touching only that value (comments survive); the file keeps
    its mode, owner and group. Returns warnings (an owner that could not be kept)."""
    text = path.read_text()
    new_text = set_homography(text, h)
    if new_text is None:
        raise UserError(f"cannot place camera.homography in {path} automatically (the camera section is not a "
                        "mapping, or the file is laid out in a way this command does not edit); add it to the "
                        "camera section by hand:\n" + homography_yaml(h))
    parse_config(new_text, str(path))  # never write a config that would not load
    try:
        return replace_keeping_owner(path, new_text)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror}); run the command with `sudo`, or add this to the "
                        "camera section by hand:\n" + homography_yaml(h)) from None


# -- bench --------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from edge.vision.bench import run_bench

    if args.seconds <= 0 or args.shoppers < 1:
        raise UserError("--seconds must be > 0 and --shoppers >= 1")
    r = run_bench(seconds=args.seconds, shoppers=args.shoppers, seed=args.seed, width=args.width,
                  height=args.height, detect_width=args.detect_width)
    if args.json:
        print_json(r)
    else:
        print(json.dumps(r, indent=2))
    return 0
