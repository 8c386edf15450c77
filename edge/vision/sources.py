"""Where frames come from: V4L2 device, RTSP/HTTP stream, video file, synthetic scene.

A source is opened, read frame by frame, and closed; ``read`` returns
``None`` when the stream ended or stalled, and the capture loop in
``edge.vision.room`` then closes it and reopens it with backoff. Frames are
only ever held in memory.
"""

from __future__ import annotations

import re
import time
from typing import Protocol

import cv2
import numpy as np

from edge.vision.scene import SyntheticScene

__all__ = ["FrameSource", "OpenCVSource", "SourceError", "SyntheticSource", "describe_source", "source_kind"]


class SourceError(RuntimeError):
    """The source cannot be opened now; the message says what to check."""


class FrameSource(Protocol):
    def open(self) -> None: ...
    def read(self) -> tuple[np.ndarray, float] | None: ...
    def close(self) -> None: ...


def source_kind(source: str | int) -> str:
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return "v4l2"
    s = str(source)
    if s == "synthetic":
        return "synthetic"
    if s.startswith("/dev/video"):
        return "v4l2"
    if re.match(r"^(rtsp|rtsps|rtmp|http|https)://", s):
        return "stream"
    return "file"


def describe_source(source: str | int) -> str:
    """The source without credentials (``rtsp://user:pass@host`` -> ``rtsp://***@host``)."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", str(source))


class OpenCVSource:
    """``cv2.VideoCapture`` with timeouts; files are paced to their frame rate."""

    def __init__(self, source: str | int, *, width: int = 640, height: int = 480, fps: float = 15.0,
                 timeout_s: float = 5.0) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.width, self.height, self.fps = width, height, fps
        self.timeout_s = timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._period = 0.0
        self._next = 0.0

    def open(self) -> None:
        ms = int(self.timeout_s * 1000)
        src = self.source
        if self.kind == "v4l2":
            index: str | int = int(src) if isinstance(src, int) or str(src).isdigit() else str(src)
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                cap.set(cv2.CAP_PROP_FPS, self.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(str(src))
        if not cap.isOpened():
            cap.release()
            hint = {
                "v4l2": "check the cable and `ls /dev/video*`; the service user needs the video group "
                        "(`sudo usermod -aG video shelfcast`)",
                "stream": "check the URL, that the camera is powered and reachable (`ping`), and its credentials",
                "file": "check the path exists and is a video OpenCV can decode",
            }[self.kind]
            raise SourceError(f"cannot open camera source {describe_source(src)}: {hint}")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS) if self.kind == "file" else 0.0
        self._period = 1.0 / (fps if 0 < fps <= 240 else self.fps) if self.kind == "file" else 0.0
        self._next = time.monotonic()

    def read(self) -> tuple[np.ndarray, float] | None:
        if self._cap is None:
            return None
        if self._period:
            now = time.monotonic()
            if self._next > now:
                time.sleep(self._next - now)
            self._next = max(self._next + self._period, time.monotonic() - self._period)
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        return frame, time.time()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource:
    """Frames from a ``SyntheticScene`` at the configured rate, in real time (wall-clock stamps)."""

    def __init__(self, scene: SyntheticScene, fps: float = 15.0) -> None:
        self.scene = scene
        self.period = 1.0 / fps
        self._next = 0.0
        self._last_t: float | None = None

    def open(self) -> None:
        self._next = time.monotonic()
        self._last_t = None

    def read(self) -> tuple[np.ndarray, float] | None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next + self.period, time.monotonic() - self.period)
        t = time.time()
        dt = self.period if self._last_t is None else min(1.0, max(1e-3, t - self._last_t))
        self._last_t = t
        self.scene.t0 = t - self.scene.elapsed - dt  # the scene clock follows the wall clock
        frame, _truth = self.scene.step(dt)
        return frame, t

    def close(self) -> None:
        pass
