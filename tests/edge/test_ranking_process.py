"""Ranking in a separate process (``model.ranking_process``): the same sets as ranking on the event loop, and a
worker that crashes, hangs or is swapped never costs a visit its set, nor leaves a process behind."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import ConfigError, NodeConfig, parse_config
from edge.events import CheckIn, RecommendationSet, ShopperEvent
from edge.ranking.adapter import load_scorer
from edge.ranking.worker import RankingProcess
from edge.recommend import Recommender
from edge.store import Profile, Store

T0 = 1_764_500_000.0


def _config(tmp: Path, on: bool, **model: Any) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    raw["model"].update({"ranking_process": on, "stage2_skip_after_ms": 0, **model})
    return NodeConfig.model_validate(raw)


class Rig:
    """A store, the recommend room (and the ranking process when on) on one bus, as the composition root wires
    them; ``step`` handles one event and waits until every set it causes is out."""

    def __init__(self, tmp: Path, on: bool, **model: Any) -> None:
        self.config = _config(tmp, on, **model)
        self.store = Store(tmp / "sc.db", flush_interval_ms=5).open()
        catalogue = bundled_catalogue()
        self.store.upsert_products(catalogue).result(5)
        self.store.set_stock({p.sku: 4 for p in catalogue}).result(5)
        self.skus = [p.sku for p in catalogue]
        self.bus = Bus()
        self.now = [T0]
        self.rec = Recommender(self.config, self.store, self.bus, model=load_scorer(self.config, store=self.store),
                               clock=lambda: self.now[0])
        self.proc: RankingProcess | None = None
        if on:
            self.proc = RankingProcess(self.config, self.store, self.rec.model, hang_s=1.0, backoff_s=(0.05, 1.0))
            self.rec.attach_ranking(self.proc)
        self.sets: list[RecommendationSet] = []
        self.bus.subscribe(RecommendationSet, self.sets.append)

    async def start(self) -> None:
        if self.proc is not None:
            await self.proc.start()
            assert self.proc.ready, "the ranking process did not start"
        await self.rec.start()

    async def stop(self) -> None:
        await self.rec.stop()
        if self.proc is not None:
            await self.proc.stop()
        self.store.close()

    async def settle(self, timeout: float = 10.0) -> None:
        rec = self.rec
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0)
        while rec._due or rec._inflight or rec._rank_scheduled:
            assert time.monotonic() < deadline, "sets still outstanding"
            await asyncio.sleep(0.001)

    async def step(self, ev: Any, t: float) -> None:
        self.now[0] = t
        self.bus.publish(ev)
        await self.settle()


def _events(config: NodeConfig, skus: list[str], n: int = 260) -> list[tuple[float, Any]]:
    """Four visits in four zones picking (and now and then putting back) what their shelves stock; one shopper
    checks in; one visit is long (its frequency caps run out and start over); a restock half way."""
    rnd = random.Random(7)
    shelves = [sh for sh in config.layout.shelves if any(sl.sku for sl in sh.slots)][:4]
    out: list[tuple[float, Any]] = []
    t = T0
    for i in range(n):
        t += 0.25
        if i == 3:
            out.append((t, CheckIn(customer="c-known", session="v1", t=t)))
            continue
        if i == n // 2:
            t += 2.0  # a restock outside the hot path: the worker hears of it within a second
            out.append((t, "restock"))
            continue
        v = 0 if i % 2 == 0 else rnd.randrange(1, 4)  # visit 0 is the long one
        sh = shelves[v]
        slot = rnd.choice([sl for sl in sh.slots if sl.sku])
        action = "put" if rnd.random() < 0.1 else "pick"
        out.append((t, ShopperEvent(session=f"v{v}", sku=slot.sku or "", action=action, zone=sh.zone, shelf=sh.id,
                                    slot=slot.slot, t=t, attributed=False)))
    return out


async def _run(tmp: Path, on: bool) -> tuple[list[tuple[Any, ...]], dict[str, int], Rig]:
    rig = Rig(tmp, on, repeat_cap=1)
    hist = tuple((s, T0 - 86400 * (1 + i // 5), 1.0) for i, s in enumerate(rig.skus[20:60]))
    rig.store.upsert_profiles([Profile("c-known", {"age": "35-44"}, hist)]).result(5)
    await rig.start()
    try:
        for t, ev in _events(rig.config, rig.skus):
            if ev == "restock":
                rig.now[0] = t
                rig.store.set_stock({s: 9 for s in rig.skus[:200]}).result(5)
                continue
            await rig.step(ev, t)
    finally:
        await rig.stop()
    sets = [(rs.screen, rs.session, rs.model_version, rs.zone, rs.t,
             tuple((i.sku, i.score, i.reason) for i in rs.items)) for rs in rig.sets]
    return sets, dict(rig.rec.stats), rig


def test_the_same_events_give_the_same_sets_in_process_and_in_the_ranking_process(tmp_path: Path) -> None:
    here, st_here, _ = asyncio.run(_run(tmp_path / "a", on=False))
    there, st_there, rig = asyncio.run(_run(tmp_path / "b", on=True))
    assert rig.proc is not None and rig.proc.stats["requests"] > 200  # the worker ranked them
    assert rig.proc.stats["crashes"] == 0 and rig.proc.stats["errors"] == 0
    assert len(here) > 200
    assert sum(1 for s in here if s[2] != "fallback") > 200  # the model ranked them, not popularity
    assert st_here["cap_resets"] >= 1  # the long visit ran out of items and its caps started over
    assert any("because you picked up" in r for s in here for _, _, r in s[5])
    for a, b in zip(here, there, strict=True):
        assert a == b
    for k in ("recommendations", "model", "fallback", "cap_resets", "same_name_dropped"):
        assert st_here[k] == st_there[k], k


def _wait(cond: Callable[[], bool], timeout: float) -> Any:
    async def go() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    return go()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _pick(rig: Rig, v: str, n: int) -> tuple[ShopperEvent, float]:
    sh = rig.config.layout.shelves[n % 3]
    sl = [s for s in sh.slots if s.sku][n % 2]
    t = T0 + n
    return ShopperEvent(session=v, sku=sl.sku or "", action="pick", zone=sh.zone, shelf=sh.id, slot=sl.slot, t=t,
                        attributed=False), t


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_worker_that_dies_or_hangs_costs_no_set_and_is_restarted(tmp_path: Path, fault: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, True)
        await rig.start()
        proc = rig.proc
        assert proc is not None and proc.pid is not None
        try:
            for n in range(3):
                await rig.step(*_pick(rig, "v1", n))
            first = proc.pid
            assert proc.stats["requests"] == 3 and len(rig.sets) == 3
            with caplog.at_level(logging.WARNING, logger="shelfcast.ranking"):
                ev, t = _pick(rig, "v1", 3)
                rig.now[0] = t
                rig.bus.publish(ev)
                await asyncio.sleep(0)  # the request is out
                assert rig.rec._inflight
                os.kill(first, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                await rig.settle(timeout=5.0)  # served in-process
            assert len(rig.sets) == 4 and rig.sets[-1].session == "v1" and rig.sets[-1].items
            assert proc.stats["crashes"] == 1 and proc.stats["hangs"] == (1 if fault == "hang" else 0)
            assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # logged once
            await _wait(lambda: _gone(first), 5.0)  # killed and reaped: no zombie
            for n in range(4, 7):  # meanwhile, or once it is back: every pick gets its set
                await rig.step(*_pick(rig, "v1", n))
            assert len(rig.sets) == 7
            await _wait(lambda: proc.ready, 30.0)
            assert proc.pid != first and proc.stats["restarts"] == 1
            before = proc.stats["requests"]
            await rig.step(*_pick(rig, "v1", 7))
            assert proc.stats["requests"] == before + 1 and len(rig.sets) == 8  # the new worker ranks again
            assert rig.sets[-1].items
        finally:
            last = proc.pid
            await rig.stop()
        assert last is not None and _gone(last)  # stopped with the room: no zombie, no orphan

    asyncio.run(main())


def test_a_hot_swap_reaches_the_worker(tmp_path: Path) -> None:
    import json
    import shutil

    from edge.ranking.ranker import DEFAULT_MODEL_DIR

    release = tmp_path / "release"
    shutil.copytree(DEFAULT_MODEL_DIR, release)
    man = json.loads((release / "manifest.json").read_text())
    man["version"] = "swap-test"
    (release / "manifest.json").write_text(json.dumps(man))

    async def main() -> None:
        rig = Rig(tmp_path / "n", True)
        await rig.start()
        try:
            await rig.step(*_pick(rig, "v1", 0))
            assert rig.sets[-1].model_version != "swap-test"
            cfg = rig.config.model_copy(update={"model": rig.config.model.model_copy(update={"path": release})})
            rig.rec.model = load_scorer(cfg, store=rig.store)  # what sync's release manager does
            n = 1
            while rig.sets[-1].model_version != "swap-test":  # the old model serves until the new one is in
                assert n < 200
                await rig.step(*_pick(rig, "v1", n))
                await asyncio.sleep(0.02)
                n += 1
            assert rig.proc is not None and rig.proc.stats["swaps"] == 1 and rig.proc.version == "swap-test"
            assert rig.rec.health()["ranking_process"] is True
        finally:
            await rig.stop()

    asyncio.run(main())


def test_the_worker_exits_when_the_node_goes_away(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "edge.ranking.worker", "--fd", str(b.fileno())],
                            pass_fds=[b.fileno()])
    b.close()
    a.close()  # the node died before (or after) sending anything
    assert proc.wait(20) in (0, 2)


def test_ranking_process_must_be_a_boolean(tmp_path: Path) -> None:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["model"]["ranking_process"] = "sometimes"
    with pytest.raises(Exception) as exc:
        NodeConfig.model_validate(raw)
    assert "ranking_process" in str(exc.value)
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text() + "\n"
    assert "ranking_process" not in text
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace("model:", "model:\n  ranking_process: sometimes", 1) if "model:" in text
                     else text + "model:\n  ranking_process: sometimes\n")
    assert "model.ranking_process" in str(err.value)
