"""Shopper blobs from a top-down camera: background model, mask, connected components.

Why not MOG2: a shopper who stops at a shelf for ten seconds is absorbed by a
mixture model within a few seconds and vanishes. This detector keeps a
running-average background that is only updated where nothing is in front
of it (selective update), compensates global lighting changes with one gain
per frame, drops ghosts (background that was learned with someone standing in
it) by comparing edges, and refuses black or overexposed frames. The frame is
downscaled to ``detect_width`` first; areas are converted to square metres
with the calibration, so the size gates are physical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

__all__ = ["DetectResult", "Detection", "Detector"]

FrameStatus = Literal["ok", "warmup", "black", "overexposed", "relearn"]


@dataclass(slots=True)
class Detection:
    x: float  # floor metres
    y: float
    area_m2: float
    points: np.ndarray | None = None  # floor coords of the blob's pixels (large blobs only, for splitting)


@dataclass(slots=True)
class DetectResult:
    status: FrameStatus
    detections: list[Detection] = field(default_factory=list)
    brightness: float = 0.0


class Detector:
    """Frame (BGR or gray, any size matching the calibration) -> floor detections."""

    def __init__(self, homography: np.ndarray, frame_size: tuple[int, int], detect_width: int = 320, *,
                 threshold: int = 28, min_area_m2: float = 0.035, person_area_m2: float = 0.15,
                 alpha: float = 0.03, black_below: float = 12.0, overexposed_above: float = 243.0,
                 ghost_check_every: int = 5) -> None:
        w, h = frame_size
        self.full_size = (int(w), int(h))
        self.scale = min(1.0, detect_width / w)
        self.size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        s = 1.0 / self.scale
        # homography from *detection-scale* pixels to floor metres
        self.h = np.asarray(homography, dtype=np.float64) @ np.diag([s, s, 1.0])
        self.h_det = float(np.linalg.det(self.h))
        self.threshold = threshold
        self.min_area_m2 = min_area_m2
        self.person_area_m2 = person_area_m2
        self.alpha = alpha
        self.black_below = black_below
        self.overexposed_above = overexposed_above
        self.ghost_check_every = ghost_check_every
        self._bg: np.ndarray | None = None
        self._bg_u8 = np.empty((self.size[1], self.size[0]), np.uint8)
        self._gray = np.empty_like(self._bg_u8)
        self._small: np.ndarray | None = None
        self._diff = np.empty_like(self._bg_u8)
        self._fg = np.empty_like(self._bg_u8)
        self._notfg = np.full_like(self._bg_u8, 255)
        self._k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._k5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._frames = 0
        # the first background is the per-pixel median of samples spread over the warm-up, so
        # shoppers walking through at start-up do not get learned as background (ghosts)
        self.warmup_frames = 24
        self.warmup_every = 3
        self._samples: list[np.ndarray] = []
        self.relearns = 0
        self.ghosts_removed = 0

    def reset(self) -> None:
        """Forget the background (camera moved, stream reconnected)."""
        self._bg = None
        self._frames = 0
        self._samples = []

    def prime(self, empty_frame: np.ndarray) -> None:
        """Start from a known empty-scene picture instead of learning one (synthetic scenes)."""
        self._bg = self._to_gray(empty_frame).astype(np.float32)
        self._samples = []
        self._frames = self.warmup_frames

    def _m2_per_px(self, u: float, v: float) -> float:
        # |det J| of a planar homography at (u, v) is det(H) / w^3
        w = self.h[2, 0] * u + self.h[2, 1] * v + self.h[2, 2]
        return abs(self.h_det / (w * w * w))

    def _to_gray(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[1] != self.size[0] or frame.shape[0] != self.size[1]:
            self._small = cv2.resize(frame, self.size, self._small, interpolation=cv2.INTER_AREA)
            src = self._small
        else:
            src = frame
        if src.ndim == 3:
            cv2.cvtColor(src, cv2.COLOR_BGR2GRAY, self._gray)
        else:
            np.copyto(self._gray, src)
        return self._gray

    def detect(self, frame: np.ndarray) -> DetectResult:
        if frame is None or frame.size == 0 or frame.ndim not in (2, 3):
            return DetectResult("black")
        gray = self._to_gray(frame)
        mean = float(cv2.mean(gray)[0])
        if mean < self.black_below:
            return DetectResult("black", brightness=mean)
        if mean > self.overexposed_above:
            return DetectResult("overexposed", brightness=mean)
        self._frames += 1
        if self._frames <= self.warmup_frames:
            if (self._frames - 1) % self.warmup_every == 0:
                self._samples.append(gray.copy())
            if self._frames == self.warmup_frames or self._bg is None:
                self._bg = np.median(np.stack(self._samples), axis=0).astype(np.float32)
            if self._frames == self.warmup_frames:
                self._samples = []
            return DetectResult("warmup", brightness=mean)
        assert self._bg is not None
        bg = self._bg
        # global gain between background and frame, measured where the scene is empty
        g_bg = cv2.mean(bg, mask=self._notfg)[0]
        g_fr = cv2.mean(gray, mask=self._notfg)[0]
        gain = g_fr / g_bg if g_bg > 1 else 1.0
        cv2.convertScaleAbs(bg, self._bg_u8, alpha=gain)
        cv2.absdiff(gray, self._bg_u8, self._diff)
        cv2.threshold(self._diff, self.threshold, 255, cv2.THRESH_BINARY, self._fg)
        fg_fraction = cv2.countNonZero(self._fg) / self._fg.size
        if fg_fraction > 0.4:
            # the whole picture changed (camera moved, auto exposure jumped): learn it again
            self.relearns += 1
            self._notfg.fill(255)
            self._frames = 0
            self._samples = []
            return DetectResult("relearn", brightness=mean)
        cv2.morphologyEx(self._fg, cv2.MORPH_OPEN, self._k3, self._fg)
        cv2.morphologyEx(self._fg, cv2.MORPH_CLOSE, self._k5, self._fg, iterations=2)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(self._fg, connectivity=8)
        dets: list[Detection] = []
        # right after (re)learning, anyone who stood in the picture leaves a ghost: look every frame
        check_ghosts = self.ghost_check_every > 0 and (self._frames % self.ghost_check_every == 0
                                                       or self._frames < 60)
        for i in range(1, n):
            area_px = int(stats[i, cv2.CC_STAT_AREA])
            cu, cv = float(cents[i, 0]), float(cents[i, 1])
            area = area_px * self._m2_per_px(cu, cv)
            if area < self.min_area_m2:
                continue
            x0, y0, bw, bh = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                          cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
            if check_ghosts and self._is_ghost(gray, labels, i, x0, y0, bw, bh):
                continue
            w = self.h[2, 0] * cu + self.h[2, 1] * cv + self.h[2, 2]
            fx = (self.h[0, 0] * cu + self.h[0, 1] * cv + self.h[0, 2]) / w
            fy = (self.h[1, 0] * cu + self.h[1, 1] * cv + self.h[1, 2]) / w
            pts = None
            if area > 1.4 * self.person_area_m2:
                ys, xs = np.nonzero(labels[y0:y0 + bh, x0:x0 + bw] == i)
                px = np.stack([xs + x0, ys + y0], 1).astype(np.float64).reshape(-1, 1, 2)
                pts = cv2.perspectiveTransform(px, self.h).reshape(-1, 2)
            dets.append(Detection(float(fx), float(fy), float(area), pts))
        # learn the background where nothing stands; dilate so blob borders do not bleed in
        cv2.dilate(self._fg, self._k5, self._notfg, iterations=2)
        cv2.bitwise_not(self._notfg, self._notfg)
        if gain > 0:
            cv2.accumulateWeighted(gray, bg, self.alpha, mask=self._notfg)
            if abs(gain - 1.0) > 0.02:
                # keep the model at the current light level so the gain does not drift
                cv2.multiply(bg, gain ** self.alpha, bg)
        return DetectResult("ok", dets, brightness=mean)

    def _is_ghost(self, gray: np.ndarray, labels: np.ndarray, i: int, x0: int, y0: int, bw: int, bh: int) -> bool:
        """A blob whose outline has edges in the background but not in the frame is a ghost: absorb it."""
        assert self._bg is not None
        pad = 2
        ya, yb = max(0, y0 - pad), min(gray.shape[0], y0 + bh + pad)
        xa, xb = max(0, x0 - pad), min(gray.shape[1], x0 + bw + pad)
        m = (labels[ya:yb, xa:xb] == i).astype(np.uint8)
        edge = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, self._k3).astype(bool)
        if edge.sum() < 8:
            return False
        fr = gray[ya:yb, xa:xb].astype(np.float32)
        bgr = self._bg[ya:yb, xa:xb]
        gf = np.abs(cv2.Sobel(fr, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(fr, cv2.CV_32F, 0, 1))
        gb = np.abs(cv2.Sobel(bgr, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(bgr, cv2.CV_32F, 0, 1))
        ef, eb = float(gf[edge].mean()), float(gb[edge].mean())
        if eb > 40 and ef < 0.45 * eb:
            mask = m.astype(bool)
            cv2.dilate(m, self._k5, m, iterations=2)
            mask = m.astype(bool)
            bgr[mask] = fr[mask]
            self.ghosts_removed += 1
            return True
        return False
