"""The vision room: camera frames in, track updates and zone events out.

Two worker threads keep the asyncio loop free: a capture thread reads the
source and a processing thread runs detection + tracking. They share a slot
that holds at most one frame: when processing falls behind, the older frame
is replaced (counted in ``frames_dropped``), so latency stays one frame and
memory stays flat. A source that fails to open, ends or stalls is closed and
reopened with exponential backoff (0.5 s doubling to ``reconnect_max_s``);
``health()`` says ``ok``, ``reconnecting`` or ``failed`` (3+ failed attempts
in a row, still retrying). Results are handed to the loop thread with
``call_soon_threadsafe``; callbacks run there and must not block.

Integration surface (stable)::

    room = VisionRoom(config, on_track, on_zone, on_status=None, on_pick=None)
    await room.start(); ...; await room.stop()
    room.health() -> {"status", "fps", "frames", "frames_dropped", "bad_frames", "reconnects", ...}
    room.scene  # the SyntheticScene when camera.source is "synthetic" (demo drives picks from it)

``on_status(ok: bool)`` fires when the camera comes up or goes down (wire it
to ``Fusion.set_camera_status``). ``on_pick(Pick)`` (also settable later as
``room.on_pick``) fires on the loop thread when a simulated shopper picks an
item (synthetic source only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.clock import SYSTEM, Clock
from edge.config import NodeConfig
from edge.events import TrackUpdate, ZoneEvent
from edge.vision.pipeline import Pipeline
from edge.vision.scene import Pick, SyntheticScene
from edge.vision.sources import FrameSource, OpenCVSource, SourceError, SyntheticSource, describe_source, source_kind

__all__ = ["VisionRoom"]

log = logging.getLogger("shelfcast.vision")

FAILED_AFTER = 3  # consecutive failed attempts before health says "failed"


class VisionRoom:
    name = "vision"

    def __init__(self, config: NodeConfig, on_track: Callable[[TrackUpdate], None],
                 on_zone: Callable[[ZoneEvent], None], *, on_status: Callable[[bool], None] | None = None,
                 on_pick: Callable[[Pick], None] | None = None, source: FrameSource | None = None,
                 scene: SyntheticScene | None = None, clock: Clock = SYSTEM) -> None:
        self.config = config
        self._clock = clock  # "no frame for N s" in monotonic time: a step of the wall clock neither hides a dead
        # stream for the length of a step back nor fakes a stall on a step forward
        self.cam = config.camera
        self._on_track = on_track
        self._on_zone = on_zone
        self._on_status = on_status
        self.on_pick = on_pick  # settable after construction (the demo sets it)
        self.scene: SyntheticScene | None = scene
        self._source = source
        self._enabled = self.cam.enabled or source is not None or scene is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: tuple[np.ndarray, float] | None = None
        self._reset_pending = False
        self._threads: list[threading.Thread] = []
        self._pipeline: Pipeline | None = None
        self.status = "disabled" if not self._enabled else "stopped"
        self._camera_up = False
        self.frames = 0
        self.frames_captured = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.failures = 0
        self.last_error = ""
        self.retry_in_s = 0.0
        self._fps = 0.0
        self._proc_ms = 0.0
        self._last_frame = 0.0
        self._n_tracks = 0
        self._stalled = False

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        if not self._enabled:
            log.info("camera disabled (camera.enabled: false); fusion runs shelf-only")
            return
        self._loop = asyncio.get_running_loop()
        src = self._source or self._make_source()
        self._source = src
        h = self.cam.homography
        homography = np.asarray(h, dtype=np.float64) if h is not None else (
            self.scene.homography if self.scene is not None else None)
        if homography is None:
            self.status = "uncalibrated"
            self.last_error = "camera.homography is not set: run `shelfcast calibrate camera --write` first"
            log.warning("vision: %s", self.last_error)
            return
        if self.scene is not None:
            self.scene.on_pick = self._pick_from_thread
        w, hgt = (self.scene.width, self.scene.height) if self.scene is not None else (self.cam.width, self.cam.height)
        self._pipeline = Pipeline(homography, (w, hgt), self.config.zone_of, self.cam.detect_width,
                                  zones={z.id: list(z.polygon) for z in self.config.layout.zones})
        if self.scene is not None:
            self._pipeline.prime(self.scene.background())  # the simulated store, empty
        self._stop.clear()
        self.status = "starting"
        self._threads = [threading.Thread(target=self._capture_loop, name="vision-capture", daemon=True),
                         threading.Thread(target=self._process_loop, name="vision-process", daemon=True)]
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            await asyncio.to_thread(t.join, 5.0)
        self._threads = []
        if self._pipeline is not None:
            for ev in self._pipeline.reset(time.time()):
                self._safe(self._on_zone, ev)
        if self._enabled and self.status not in ("uncalibrated",):
            self.status = "stopped"

    def health(self) -> dict[str, Any]:
        age = self._clock.mono() - self._last_frame if self._last_frame else None
        return {
            "status": self.status,
            "source": "synthetic" if self.scene is not None else describe_source(self.cam.source),
            "fps": round(self._fps, 1),
            "process_ms": round(self._proc_ms, 2),
            "frames": self.frames,
            "frames_captured": self.frames_captured,
            "frames_dropped": self.frames_dropped,
            "bad_frames": self._pipeline.bad_frames if self._pipeline else 0,
            "reconnects": self.reconnects,
            "consecutive_failures": self.failures,
            "retry_in_s": round(self.retry_in_s, 2),
            "last_error": self.last_error,
            "last_frame_age_s": round(age, 2) if age is not None else None,
            "tracks": self._n_tracks,
        }

    # -- threads --------------------------------------------------------------
    def _make_source(self) -> FrameSource:
        if source_kind(self.cam.source) == "synthetic":
            if self.scene is None:
                self.scene = SyntheticScene(self.config.layout, n_shoppers=self.cam.synthetic_shoppers,
                                            seed=self.cam.synthetic_seed, width=self.cam.width,
                                            height=self.cam.height, t0=time.time())
            return SyntheticSource(self.scene, self.cam.fps)
        return OpenCVSource(self.cam.source, width=self.cam.width, height=self.cam.height, fps=self.cam.fps,
                            timeout_s=self.cam.stream_timeout_s)

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        up = status == "ok"
        if up != self._camera_up:
            self._camera_up = up
            if up:
                log.info("camera up: %s", describe_source(self.cam.source))
            else:
                log.warning("camera down (%s): %s", status, self.last_error or "stream ended")
            if self._on_status is not None:
                self._post(self._on_status, up)

    def _capture_loop(self) -> None:
        src = self._source
        assert src is not None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                src.open()
            except Exception as exc:  # SourceError, or a driver/cv2.error: keep retrying
                self.last_error = str(exc) if isinstance(exc, SourceError) else f"open failed: {exc}"
                self._fail(backoff)
                backoff = min(backoff * 2, self.cam.reconnect_max_s)
                continue
            got = False
            try:
                while not self._stop.is_set():
                    r = src.read()
                    if r is None:
                        break
                    if not got:
                        got = True
                        self.failures = 0
                        backoff = 0.5
                        self.last_error = ""
                        self._set_status("ok")
                    self.frames_captured += 1
                    with self._cond:
                        if self._slot is not None:
                            self.frames_dropped += 1
                        self._slot = r
                        self._cond.notify()
            except Exception as exc:  # a driver error must not kill the thread
                self.last_error = f"read failed: {exc}"
            finally:
                src.close()
            if self._stop.is_set():
                break
            self.reconnects += 1
            if not self.last_error:
                self.last_error = "stream ended or stalled" if got else "opened but delivered no frame"
            with self._cond:
                self._reset_pending = True
                self._cond.notify()
            self._fail(backoff)
            backoff = min(backoff * 2, self.cam.reconnect_max_s)

    def _fail(self, backoff: float) -> None:
        self.failures += 1
        self._set_status("failed" if self.failures >= FAILED_AFTER else "reconnecting")
        self.retry_in_s = backoff
        self._stop.wait(backoff)
        self.retry_in_s = 0.0

    def _process_loop(self) -> None:
        pipe = self._pipeline
        assert pipe is not None
        last_t = 0.0
        jumps = self._clock.watch()
        while not self._stop.is_set():
            with self._cond:
                if self._slot is None and not self._reset_pending:
                    self._cond.wait(0.5)
                item, self._slot = self._slot, None
                reset, self._reset_pending = self._reset_pending, False
            if reset:
                # the stream broke: old tracks are gone, their shoppers left our sight
                for ev in pipe.reset(self._clock.wall()):
                    self._post(self._on_zone, ev)
                self._n_tracks = 0
            if item is None:
                if self.status == "ok" and self._last_frame and \
                        self._clock.mono() - self._last_frame > self.cam.stream_timeout_s:
                    self.last_error = f"no frame for {self.cam.stream_timeout_s:g} s"
                    self._stalled = True
                    self._set_status("reconnecting")
                continue
            if self._stalled:  # the stream came back by itself
                self._stalled = False
                self.last_error = ""
                self._set_status("ok")
            frame, t = item
            step = jumps.check()
            if step:  # the wall clock stepped: tracks follow; this frame may carry a stamp from either side of it
                log.info("vision: the wall clock stepped by %+.1f s; tracks keep their times", step)
                pipe.shift_time(step)
                last_t += step
                continue
            t0 = time.perf_counter()
            try:
                res = pipe.process(frame, t)
            except Exception:  # bad frame data must not stop the camera
                log.exception("vision: frame processing failed; frame skipped")
                continue
            dt = time.perf_counter() - t0
            self._proc_ms = dt * 1000 if not self.frames else 0.95 * self._proc_ms + 50 * dt
            self.frames += 1
            self._last_frame = self._clock.mono()
            if last_t:
                inst = 1.0 / max(1e-3, t - last_t)
                self._fps = inst if self._fps == 0 else 0.9 * self._fps + 0.1 * inst
            last_t = t
            self._n_tracks = len(res.tracks)
            if res.updates or res.zone_events:
                self._post(self._deliver, res.updates, res.zone_events)

    # -- delivery on the loop thread -----------------------------------------
    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, updates: list[TrackUpdate], events: list[ZoneEvent]) -> None:
        # exits first, then enters, then positions: consumers see a consistent picture
        for ev in events:
            self._safe(self._on_zone, ev)
        for u in updates:
            self._safe(self._on_track, u)

    def _pick_from_thread(self, pick: Pick) -> None:
        if self.on_pick is not None:
            self._post(self._safe, self.on_pick, pick)

    @staticmethod
    def _safe(fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("vision: a subscriber failed on %s", type(arg).__name__)
