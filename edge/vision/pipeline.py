"""One frame in, track updates and zone events out: detector + tracker + zones.

Pure computation with no threads or I/O, so the room, the benchmark and the
tests all run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.events import TrackUpdate, ZoneEvent
from edge.vision.calibration import image_to_floor
from edge.vision.detect import Detector, FrameStatus
from edge.vision.track import Track, Tracker, ZoneTracker

__all__ = ["FrameResult", "Pipeline"]


@dataclass(slots=True)
class FrameResult:
    status: FrameStatus
    updates: list[TrackUpdate] = field(default_factory=list)
    zone_events: list[ZoneEvent] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    n_detections: int = 0


class Pipeline:
    def __init__(self, homography: np.ndarray, frame_size: tuple[int, int],
                 zone_of: Callable[[float, float], str | None], detect_width: int = 320,
                 zones: dict[str, list[tuple[float, float]]] | None = None) -> None:
        w, h = frame_size
        corners = image_to_floor(np.asarray(homography), np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        self.bounds = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        self.detector = Detector(homography, frame_size, detect_width)
        self.tracker = Tracker(bounds=self.bounds)
        self.zones = ZoneTracker(zone_of, zones=zones)
        self.bad_frames = 0

    def process(self, frame: np.ndarray, t: float) -> FrameResult:
        res = self.detector.detect(frame)
        if res.status != "ok":
            if res.status in ("black", "overexposed"):
                self.bad_frames += 1
            # no measurement this frame: tracks coast (and expire) on their predictions
            tracks = self.tracker.step([], t) if res.status != "warmup" else []
            updates, events = self.zones.update(tracks, t)
            return FrameResult(res.status, updates, events, tracks)
        tracks = self.tracker.step(res.detections, t)
        updates, events = self.zones.update(tracks, t)
        return FrameResult("ok", updates, events, tracks, len(res.detections))

    def prime(self, empty_frame: np.ndarray) -> None:
        """Use this empty-scene picture as the background (skips the warm-up)."""
        self.detector.prime(empty_frame)

    def shift_time(self, d: float) -> None:
        """The wall clock (frame stamps) stepped by ``d`` s: move the tracks' and zones' times with it. Else a step
        back froze every track as a ghost for the length of the step (no prediction for a negative dt, a coast
        that never exceeds ``max_coast_s``, a gate shrunk below zero that matches nothing) and a step forward
        dropped them all at once."""
        for tr in self.tracker.tracks:
            tr.t += d
            tr.born += d
            tr.last_seen += d
        for st in self.zones._state.values():
            st.since += d
            st.cand_since += d

    def reset(self, t: float) -> list[ZoneEvent]:
        """Forget tracks and background (stream lost); returns the exit events owed."""
        self.detector.reset()
        self.tracker.tracks.clear()
        return self.zones.close_all(t)
