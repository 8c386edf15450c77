"""Camera positioning: who stands where on the floor.

Frames (V4L2, RTSP/HTTP, file, or the synthetic scene) -> shopper blobs
(background model, top-down) -> tracks with stable ids (Kalman + Hungarian)
-> ``TrackUpdate`` (floor metres, zone, dwell) and ``ZoneEvent`` (enter/exit
with dwell). Frames stay in memory; nothing looks at faces or appearance.

Public API (stable; see each module's docstring):

- ``VisionRoom(config, on_track, on_zone, on_status=None, on_pick=None)``:
  ``async start()``, ``async stop()``, ``health()``, ``.scene``.
- ``SyntheticScene(layout, n_shoppers, seed, ...)``: ``step(dt) -> (frame_bgr,
  GroundTruth)``, ``on_pick`` hook, exact ``homography``.
- ``Pipeline(homography, frame_size, zone_of)``: one frame -> updates + zone events.
- ``compute_homography(image_pts, floor_pts) -> Calibration`` (``CalibrationError``).
- CLI: ``shelfcast calibrate camera`` and ``shelfcast bench vision`` (``edge.vision.cli``).
"""

from typing import Any

__all__ = [
    "Calibration",
    "CalibrationError",
    "FrameResult",
    "GroundTruth",
    "Pick",
    "Pipeline",
    "ShopperTruth",
    "SyntheticScene",
    "VisionRoom",
    "aisle_layout",
    "compute_homography",
]


_LAZY = {
    "Calibration": "edge.vision.calibration",
    "CalibrationError": "edge.vision.calibration",
    "compute_homography": "edge.vision.calibration",
    "FrameResult": "edge.vision.pipeline",
    "Pipeline": "edge.vision.pipeline",
    "VisionRoom": "edge.vision.room",
    "GroundTruth": "edge.vision.scene",
    "Pick": "edge.vision.scene",
    "ShopperTruth": "edge.vision.scene",
    "SyntheticScene": "edge.vision.scene",
    "aisle_layout": "edge.vision.scene",
}


def __getattr__(name: str) -> Any:
    """Import on first use: ``shelfcast`` commands start fast and load only the rooms they run."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
