"""Deferred work of the recommend room: on the event loop a second's popularity observations are fed to the
fallback a slice at a time after ranking passes (not inside the burst that crosses the second), and the store
writer is nudged once a pass's sets are out. Same learned state as feeding them all at once."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

import pytest

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent
from edge.recommend import OBS_SLICE, Recommender
from edge.store import Store


def _config(tmp: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    return NodeConfig.model_validate(raw)


def _picks(config: NodeConfig, skus: list[str], n: int, t0: float) -> list[ShopperEvent]:
    sh = config.layout.shelves[0]
    return [ShopperEvent(session="v0", sku=skus[i % 40], action="pick", zone=sh.zone, shelf=sh.id, slot=0,
                         t=t0 + i * 0.001) for i in range(n)]


def test_observations_on_the_loop_go_in_slices_and_end_equal(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(tmp_path / "sc.db", flush_interval_ms=5).open()
    try:
        catalogue = bundled_catalogue()
        store.upsert_products(catalogue).result(5)
        skus = [p.sku for p in catalogue]
        n = 3 * OBS_SLICE + 5
        t0 = time.time()
        picks = _picks(config, skus, n, t0)

        # reference: no loop, everything applied at once by the first ranking after the second
        ref = Recommender(config, store, Bus(), clock=lambda: t0 + 2.0)
        ref._observed_at = t0 + 0.5
        for ev in picks:
            ref.on_shopper_event(ev)

        rec = Recommender(config, store, Bus(), clock=lambda: t0 + 2.0)
        nudges: list[float] = []
        real_nudge = store.nudge

        def counted() -> None:
            nudges.append(time.monotonic())
            real_nudge()

        store.nudge = counted  # type: ignore[method-assign]
        staged_after: list[int] = []

        async def run() -> None:
            await rec.start()
            rec._observed_at = t0 + 1.5  # the second is not over: the picks only collect
            for ev in picks:
                rec.on_shopper_event(ev)
            await asyncio.sleep(0.01)  # one ranking pass: nothing staged yet
            assert len(rec._observations) == n and not rec._obs_staged
            rec._observed_at = t0 + 0.5  # the next pick's ranking crosses the second: stage, apply later
            extra = ShopperEvent(session="v0", sku=skus[0], action="pick", zone=picks[0].zone, shelf=picks[0].shelf,
                                 slot=0, t=t0 + n * 0.001)
            ref.on_shopper_event(extra)  # the reference applies everything in that ranking
            rec.on_shopper_event(extra)
            for _ in range(8):
                await asyncio.sleep(0.005)
                staged_after.append(len(rec._obs_staged) - rec._obs_pos)
                rec.on_shopper_event(extra)  # keep ranking passes coming
                ref.on_shopper_event(extra)
            await rec.stop()

        asyncio.run(run())
        # the first pass after staging applied one slice, not everything
        assert staged_after[0] > 0 and staged_after[0] <= n + 1 - OBS_SLICE
        assert staged_after[-1] == 0
        rec.apply_observations()
        ref.apply_observations()
        assert {k: dict(v) for k, v in rec.fallback._live.items()} == \
               {k: dict(v) for k, v in ref.fallback._live.items()}
        assert nudges  # the writer was nudged after the passes
    finally:
        store.close()


def test_store_nudge_starts_a_slice_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nudged writer runs its next slice at once instead of at its own time (APPLY_SLICE_S); never more often
    than NUDGE_MIN_S; close still commits at once."""
    from edge import store as store_mod

    monkeypatch.setattr(store_mod, "APPLY_SLICE_S", 1.0)  # the writer's own slices: far apart
    store = Store(tmp_path / "sc.db", flush_interval_ms=3000).open()
    try:
        store.submit(lambda c: None)  # opens a batch: the writer now waits up to 1 s for its next slice
        time.sleep(0.1)
        s0 = store._slice_at
        store.nudge()
        deadline = time.monotonic() + 0.5
        while store._slice_at == s0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store._slice_at > s0  # the nudge started a slice well before the writer's own second
        store.nudge()  # right after that slice: too soon, no kick
        assert not store._kick.is_set()
    finally:
        t = time.monotonic()
        store.close()
        assert time.monotonic() - t < 1.0  # the open 3 s batch was committed at close, not at its deadline


def test_a_pick_on_a_quiet_node_is_learned_by_the_room_s_tick(tmp_path: Path) -> None:
    """A pick less than a second after the one before waits for the next ranking a second later; on a quiet node
    no ranking comes (nobody else picks, the idle screens refresh once a minute, or no screen at all). The room's
    tick (``LEARN_EVERY_S``) feeds it to the fallback. Old code: never learned here (the clock stands still, as if
    nobody asked)."""
    config = _config(tmp_path)
    store = Store(tmp_path / "sc.db", flush_interval_ms=5).open()
    try:
        catalogue = bundled_catalogue()
        store.upsert_products(catalogue).result(5)
        t0 = time.time()
        rec = Recommender(config, store, Bus(), clock=lambda: t0 + 0.5)
        sh = config.layout.shelves[2]
        zone = sh.zone
        skus = [sl.sku for sl in sh.slots if sl.sku is not None]
        hour = datetime.fromtimestamp(t0, rec.tz).hour

        def learned() -> set[str]:
            top = rec.fallback.top(zone, hour, len(catalogue))
            return {i.sku for i in top if i.reason == "popular here at this hour"}

        seen: list[set[str]] = []

        async def run() -> None:
            await rec.start()
            try:
                assert rec._learn_task is not None
                rec.on_shopper_event(ShopperEvent(session="v", sku=skus[0], action="pick", zone=zone, shelf=sh.id,
                                                  slot=0, t=t0, id="p0"))
                await asyncio.sleep(0.05)  # its ranking passes: the first ranking crosses the second, it is fed
                rec.on_shopper_event(ShopperEvent(session="v", sku=skus[1], action="pick", zone=zone, shelf=sh.id,
                                                  slot=1, t=t0 + 0.1, id="p1"))
                await asyncio.sleep(0.05)  # its ranking passes: within the second, it is not fed
                seen.append(learned())
                for _ in range(100):  # the tick comes within LEARN_EVERY_S; give it 10 s on a loaded machine
                    await asyncio.sleep(0.1)
                    if skus[1] in learned():
                        break
                seen.append(learned())
                assert not rec._observations and not rec._obs_staged
            finally:
                await rec.stop()

        asyncio.run(run())
        assert seen[0] == {skus[0]}, seen
        assert seen[1] == {skus[0], skus[1]}, seen
        assert rec.stats["recommendations"] == 2  # no other ranking fed it
    finally:
        store.close()
