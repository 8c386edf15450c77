"""Image-to-floor homography: compute it from reference points, check it, draw it.

A technician marks >= 4 points whose floor position (metres, in the layout's
frame) is known and finds them in a camera snapshot (pixels). The homography
maps image pixels to floor metres; its reprojection error in centimetres says
whether the points were measured well. Everything here is plain computation
(no I/O except ``draw_preview`` returning an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import LayoutSection

__all__ = [
    "LARGE_ERROR_CM",
    "Calibration",
    "CalibrationError",
    "compute_homography",
    "draw_pixel_grid",
    "draw_preview",
    "floor_to_image",
    "image_to_floor",
]

#: reprojection RMSE above which a calibration is flagged (not silently accepted)
LARGE_ERROR_CM = 10.0


class CalibrationError(ValueError):
    """Reference points that cannot give a homography; the message says how to fix them."""


@dataclass(frozen=True, slots=True)
class Calibration:
    homography: np.ndarray  # 3x3 image px -> floor m
    rmse_cm: float
    max_error_cm: float
    errors_cm: tuple[float, ...]
    inliers: int
    n_points: int

    @property
    def large_error(self) -> bool:
        return self.rmse_cm > LARGE_ERROR_CM

    def as_config(self) -> list[list[float]]:
        h = self.homography / self.homography[2, 2]
        return [[float(f"{v:.9g}") for v in row] for row in h]


def _collinear(pts: np.ndarray, rel_tol: float = 1e-3) -> bool:
    """True when all points lie (nearly) on one line: the smallest singular value vanishes."""
    c = pts - pts.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    return bool(s[0] == 0 or s[-1] / s[0] < rel_tol)


def compute_homography(image_pts: Sequence[Sequence[float]], floor_pts: Sequence[Sequence[float]],
                       *, ransac_threshold_m: float = 0.15) -> Calibration:
    """Fit the image->floor homography; raises ``CalibrationError`` with the fix."""
    img = np.asarray(image_pts, dtype=np.float64).reshape(-1, 2)
    flo = np.asarray(floor_pts, dtype=np.float64).reshape(-1, 2)
    if len(img) != len(flo):
        raise CalibrationError(f"{len(img)} image points but {len(flo)} floor points; give them in pairs")
    if len(img) < 4:
        raise CalibrationError(
            f"need at least 4 reference points (image pixel -> floor metres), got {len(img)}; "
            "mark more floor points you can measure (tile corners, shelf feet), ideally 6 or more"
        )
    if not (np.isfinite(img).all() and np.isfinite(flo).all()):
        raise CalibrationError("reference points must be finite numbers")
    for name, pts in (("image", img), ("floor", flo)):
        if _collinear(pts):
            raise CalibrationError(
                f"the {name} points are (nearly) on one line; a homography needs points spread over "
                "the floor: pick at least 4 points that are not in a row, e.g. the 4 corners of the aisle"
            )
        if len({(round(p[0], 6), round(p[1], 6)) for p in pts}) < len(pts):
            raise CalibrationError(f"two {name} points are identical; every reference point must be distinct")
    method = cv2.RANSAC if len(img) > 4 else 0
    h, mask = cv2.findHomography(img, flo, method, ransac_threshold_m)
    if h is None or not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12:
        raise CalibrationError("no homography fits these points; check that each image point matches its "
                               "floor point and that no three of them are in a row")
    proj = image_to_floor(h, img)
    err = np.linalg.norm(proj - flo, axis=1) * 100.0
    return Calibration(
        homography=h,
        rmse_cm=float(np.sqrt(np.mean(err**2))),
        max_error_cm=float(err.max()),
        errors_cm=tuple(float(e) for e in err),
        inliers=int(mask.sum()) if mask is not None else len(img),
        n_points=len(img),
    )


def image_to_floor(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) -> floor metres (N, 2)."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(p, np.asarray(h, dtype=np.float64)).reshape(-1, 2)


def floor_to_image(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Floor metres (N, 2) -> pixels (N, 2)."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(p, np.linalg.inv(np.asarray(h, dtype=np.float64))).reshape(-1, 2)


def draw_preview(snapshot: np.ndarray, h: np.ndarray, layout: LayoutSection,
                 image_pts: Sequence[Sequence[float]] = (), floor_pts: Sequence[Sequence[float]] = ()
                 ) -> np.ndarray:
    """Zones, shelves (with reach) and reference points drawn over a copy of the snapshot."""
    img = snapshot.copy() if snapshot.ndim == 3 else cv2.cvtColor(snapshot, cv2.COLOR_GRAY2BGR)
    overlay = img.copy()
    palette = [(80, 200, 80), (200, 120, 60), (60, 160, 230), (200, 80, 200), (80, 200, 200)]
    for i, z in enumerate(layout.zones):
        poly = floor_to_image(h, np.array(z.polygon)).round().astype(np.int32)
        color = palette[i % len(palette)]
        cv2.fillPoly(overlay, [poly], color)
        cv2.polylines(img, [poly], True, color, 2, cv2.LINE_AA)
        c = poly.mean(axis=0).astype(int)
        cv2.putText(img, z.id, (int(c[0]) - 20, int(c[1])), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    img = cv2.addWeighted(overlay, 0.25, img, 0.75, 0)
    for s in layout.shelves:
        x, y = s.position
        circle = np.array([(x + s.reach_m * np.cos(a), y + s.reach_m * np.sin(a))
                           for a in np.linspace(0, 2 * np.pi, 48)])
        ring = floor_to_image(h, circle).round().astype(np.int32)
        cv2.polylines(img, [ring], True, (0, 200, 255), 1, cv2.LINE_AA)
        p = floor_to_image(h, np.array([[x, y]]))[0].round().astype(int)
        cv2.rectangle(img, (int(p[0]) - 5, int(p[1]) - 5), (int(p[0]) + 5, int(p[1]) + 5), (0, 0, 255), -1)
        cv2.putText(img, s.id, (int(p[0]) + 7, int(p[1]) - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1,
                    cv2.LINE_AA)
    for sc in layout.screens:
        p = floor_to_image(h, np.array([sc.position]))[0].round().astype(int)
        cv2.drawMarker(img, (int(p[0]), int(p[1])), (255, 0, 255), cv2.MARKER_DIAMOND, 12, 2)
    if len(image_pts) and len(floor_pts):
        reproj = floor_to_image(h, np.asarray(floor_pts, dtype=np.float64))
        for (u, v), (ru, rv) in zip(np.asarray(image_pts, dtype=np.float64), reproj, strict=False):
            cv2.circle(img, (round(u), round(v)), 6, (0, 255, 0), 2, cv2.LINE_AA)
            cv2.drawMarker(img, (round(ru), round(rv)), (0, 0, 255), cv2.MARKER_CROSS, 10, 1)
    return img


def draw_pixel_grid(snapshot: np.ndarray, step: int = 50) -> np.ndarray:
    """A copy of the snapshot with a pixel grid (a line every ``step`` px, labelled every 2 steps) to read the
    reference points' U,V from by eye (``shelfcast calibrate camera --grab``)."""
    img = snapshot.copy() if snapshot.ndim == 3 else cv2.cvtColor(snapshot, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    for x in range(0, w, step):
        cv2.line(img, (x, 0), (x, h - 1), (0, 255, 255) if x % (2 * step) == 0 else (0, 140, 140), 1)
    for y in range(0, h, step):
        cv2.line(img, (0, y), (w - 1, y), (0, 255, 255) if y % (2 * step) == 0 else (0, 140, 140), 1)
    for x in range(0, w, 2 * step):
        cv2.putText(img, str(x), (x + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1, cv2.LINE_AA)
    for y in range(2 * step, h, 2 * step):
        cv2.putText(img, str(y), (2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1, cv2.LINE_AA)
    return img
