"""The camera's "no frame for N s" check across a step of the wall clock back by an hour (NTP putting right a
clock that ran ahead): the stalled stream is still reported within its timeout. Before, the check compared
wall times, and a step back hid a dead stream for as long as the step. Real VisionRoom threads and real
OpenCV processing of rendered frames; the wall clock the room sees is moved by the test (``edge.clock.Clock``)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from edge.clock import Clock
from edge.config import NodeConfig
from edge.vision import VisionRoom
from edge.vision.scene import SyntheticScene, aisle_layout


class _DyingSource:
    """30 frames/s for 40 frames, then hangs (a camera that died): the wall clock steps back an hour at frame 20."""

    def __init__(self, frames: list[np.ndarray], step: list[float]) -> None:
        self.frames = frames
        self.step = step
        self.i = 0

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, float] | None:
        self.i += 1
        if self.i == 20:
            self.step[0] = -3600.0
        if self.i > 40:
            time.sleep(5.0)
        time.sleep(1 / 30)
        return self.frames[self.i % len(self.frames)], time.time() + self.step[0]

    def close(self) -> None:
        pass


def test_a_dead_stream_is_reported_after_the_clock_steps_back() -> None:
    scene = SyntheticScene(aisle_layout(), n_shoppers=2, seed=3)
    frames = [scene.step(1 / 15)[0] for _ in range(10)]
    cfg = NodeConfig.model_validate({"layout": aisle_layout().model_dump(mode="json"),
                                     "camera": {"enabled": True, "source": "rtsp://cam/1",
                                                "homography": scene.homography.tolist(), "stream_timeout_s": 0.5}})
    step = [0.0]
    clock = Clock(wall=lambda: time.time() + step[0])

    async def run() -> list[str]:
        room = VisionRoom(cfg, lambda u: None, lambda z: None, source=_DyingSource(frames, step), clock=clock)
        await room.start()
        seen: list[str] = []
        t_end = time.monotonic() + 3.5
        try:
            while time.monotonic() < t_end:
                st = room.health()["status"]
                if not seen or seen[-1] != st:
                    seen.append(st)
                if st == "reconnecting":
                    break
                await asyncio.sleep(0.02)
            assert room.health()["last_frame_age_s"] < 10  # elapsed, not an hour the other way
        finally:
            await room.stop()
        return seen

    seen = asyncio.run(run())
    assert step[0] == -3600.0 and "ok" in seen
    assert seen[-1] == "reconnecting", seen  # frames stopped ~1.3 s in; timeout 0.5 s


class _LeavingSource:
    """Shoppers walk for 3 s (15 frames/s), the wall clock steps back an hour, then the store is empty."""

    def __init__(self, scene: SyntheticScene, step: list[float]) -> None:
        self.scene = scene
        self.step = step
        self.i = 0
        self.empty = scene.background()

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, float] | None:
        self.i += 1
        time.sleep(1 / 15)
        if self.i == 45:
            self.step[0] = -3600.0
        frame = self.scene.step(1 / 15)[0] if self.i < 45 else self.empty.copy()
        return frame, time.time() + self.step[0]

    def close(self) -> None:
        pass


def test_tracks_of_shoppers_who_left_end_after_the_clock_steps_back() -> None:
    """Before, a step back froze every track as a ghost for the length of the step: no prediction for a negative
    dt, a coast that never passed max_coast_s, a gate below zero. Now the tracks' times follow the step and the
    ghosts coast out in max_coast_s (2 s) of frames."""
    scene = SyntheticScene(aisle_layout(), n_shoppers=3, seed=5)
    cfg = NodeConfig.model_validate({"layout": aisle_layout().model_dump(mode="json"),
                                     "camera": {"enabled": True, "source": "rtsp://cam/1",
                                                "homography": scene.homography.tolist(), "stream_timeout_s": 5}})
    step = [0.0]
    clock = Clock(wall=lambda: time.time() + step[0])

    async def run() -> tuple[int, list[int]]:
        room = VisionRoom(cfg, lambda u: None, lambda z: None, source=_LeavingSource(scene, step), scene=scene,
                          clock=clock)
        await room.start()
        try:
            while step[0] == 0.0:
                await asyncio.sleep(0.02)
            before = room.health()["tracks"]
            after: list[int] = []
            t_end = time.monotonic() + 4.5
            while time.monotonic() < t_end:
                after.append(room.health()["tracks"])
                await asyncio.sleep(0.1)
        finally:
            await room.stop()
        return before, after

    before, after = asyncio.run(run())
    assert before >= 1  # shoppers were tracked when the clock stepped
    assert after[-1] == 0, after  # gone within 4.5 s of empty frames, not an hour
