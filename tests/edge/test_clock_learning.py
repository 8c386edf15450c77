"""Picks made before NTP syncs never teach the popularity fallback (zone x local hour) a wrong hour.

A Pi has no real-time clock: it boots at fake-hwclock's last-shutdown time (or 1970, or a clock running ahead)
and NTP steps it later. A real node (demo store, bundled catalogue and model, SQLite; no broker, screens or
camera) whose clock (``edge.clock.SYSTEM``, the one the composition root hands the rooms) the test moves and
whose NTP state it sets; picks go over the node's bus as fusion publishes them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge import clock as clock_mod
from edge.app import Node
from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent
from edge.ranking.fallback import SYNC_LOOK_S, PopularityRanker

TRUE = datetime(2026, 12, 2, 7, 10, tzinfo=UTC).timestamp()  # when the store opens (node.timezone UTC: hour 7)
HOUR = 3600.0


def _config(tmp_path: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"].update(data_dir=str(tmp_path), timezone="UTC")
    raw["signage"]["enabled"] = False
    raw["shelves"]["enabled"] = False
    raw["camera"]["enabled"] = False
    raw["mqtt"]["local"]["url"] = None
    return NodeConfig.model_validate(raw)


@pytest.fixture
def node_clock(monkeypatch: pytest.MonkeyPatch, fake_clock: Any) -> Callable[[float, bool | None], Any]:
    """``fc, ntp = node_clock(wall, synced)``: the node's clock reads the fake ``fc``; ``ntp[0]`` is what the
    kernel says (adjtimex: True synced, False not, None cannot tell)."""

    def make(wall: float, synced: bool | None) -> Any:
        fc = fake_clock(wall, 5000.0)
        ntp: list[bool | None] = [synced]
        monkeypatch.setattr(clock_mod.SYSTEM, "wall", lambda: fc.w)
        monkeypatch.setattr(clock_mod.SYSTEM, "mono", lambda: fc.m)
        monkeypatch.setattr(clock_mod.SYSTEM, "synced", lambda: ntp[0])
        return fc, ntp

    return make


def _run(config: NodeConfig, scenario: Callable[[Node], None]) -> None:
    async def go() -> None:
        node = Node(config)
        await node.start()
        try:
            scenario(node)
        finally:
            await node.stop()

    asyncio.run(go())


def _dairy(config: NodeConfig) -> tuple[Any, list[str]]:
    shelf = next(s for s in config.layout.shelves if s.zone == "dairy")
    return shelf, [sl.sku for sl in shelf.slots if sl.sku]


@pytest.mark.parametrize(("boot", "kernel"), [
    (-9 * HOUR, False),  # fake-hwclock: the last shutdown, 22:10 the evening before
    (60.0 - TRUE, None),  # 1970 (no fake-hwclock file): before the build date whatever adjtimex says
    (3 * HOUR, False),  # a clock running three hours ahead: NTP steps it back
], ids=["fake-hwclock", "1970", "ahead"])
def test_picks_before_ntp_syncs_are_not_learned_in_a_wrong_hour(tmp_path: Path, node_clock: Any, boot: float,
                                                                  kernel: bool | None) -> None:
    config = _config(tmp_path)
    fc, ntp = node_clock(TRUE + boot, kernel)
    shelf, (early, late, *_) = _dairy(config)
    wrong_hour = datetime.fromtimestamp(TRUE + boot, UTC).hour
    seen: dict[str, Any] = {}

    def pick(node: Node, sku: str) -> None:
        node.bus.publish(ShopperEvent(session="anon-dairy-1", sku=sku, action="pick", zone="dairy", shelf=shelf.id,
                                      slot=0, t=fc.w, attributed=False))
        fc.elapse(0.5)

    def scenario(node: Node) -> None:
        rec = node.recommender
        assert rec is not None
        for _ in range(15):
            pick(node, early)
        rec.apply_observations()
        seen["unsynced"] = dict(node.health()["rooms"]["recommend"])
        for _ in range(5):  # picked just before NTP syncs, fed to the fallback only after (batches are late)
            pick(node, early)
        fc.step(-boot)  # NTP steps the clock to the true time
        ntp[0] = True
        fc.elapse(SYNC_LOOK_S + 1)
        for _ in range(10):
            pick(node, late)
        rec.apply_observations()
        seen["live"] = {k: {s: c[0] for s, c in b.items()} for k, b in rec.fallback._live.items() if b}
        seen["synced"] = dict(node.health()["rooms"]["recommend"])

    _run(config, scenario)
    assert ("dairy", wrong_hour) not in seen["live"], seen["live"]  # the old code learned `early` there
    assert set(seen["live"]) == {("dairy", 7)}
    assert set(seen["live"][("dairy", 7)]) == {late}, seen["live"]  # none of the 5 stamped before the step
    assert seen["live"][("dairy", 7)][late] == pytest.approx(10)
    assert seen["unsynced"]["popular_learning"] == "paused: clock unsynced"
    assert seen["unsynced"]["popular_unsynced_skipped"] == 15
    assert seen["synced"]["popular_learning"] == "on"
    assert seen["synced"]["popular_unsynced_skipped"] == 20


def test_a_synced_node_learns_every_pick_in_its_hour(tmp_path: Path, node_clock: Any) -> None:
    """The guard costs nothing when the clock is right: every pick is learned (also one fed a minute late)."""
    config = _config(tmp_path)
    fc, _ = node_clock(TRUE, True)
    shelf, (sku, *_) = _dairy(config)
    seen: dict[str, Any] = {}

    def scenario(node: Node) -> None:
        rec = node.recommender
        assert rec is not None
        for _ in range(12):
            node.bus.publish(ShopperEvent(session="anon-dairy-1", sku=sku, action="pick", zone="dairy",
                                          shelf=shelf.id, slot=0, t=fc.w, attributed=False))
            fc.elapse(5.0)
        rec.apply_observations()
        seen["live"] = {k: {s: c[0] for s, c in b.items()} for k, b in rec.fallback._live.items() if b}
        seen["health"] = dict(node.health()["rooms"]["recommend"])

    _run(config, scenario)
    assert seen["live"] == {("dairy", 7): {sku: pytest.approx(12)}}
    assert seen["health"]["popular_unsynced_skipped"] == 0 and seen["health"]["popular_learning"] == "on"


def test_the_fallback_looks_at_the_sync_state_every_few_seconds_not_per_pick(fake_clock: Any) -> None:
    fc = fake_clock(TRUE, 100.0)
    looks = [0]

    def synced() -> bool:
        looks[0] += 1
        return True

    from edge.clock import Clock

    r = PopularityRanker([("milk", 5.0, "dairy")], clock=Clock(wall=lambda: fc.w, mono=lambda: fc.m, synced=synced))
    for _ in range(1000):
        r.observe("milk", "dairy", 7, fc.w)
        fc.elapse(0.01)  # 10 s in all
    assert looks[0] == 2 and r._live[("dairy", 7)]["milk"][0] == pytest.approx(1000)
    r.observe("milk", "dairy", 7, fc.w + 30.0)  # stamped ahead of the clock: not when it is now
    assert r.unsynced_skipped == 1


def test_doctor_says_the_popular_items_learn_nothing_until_the_clock_syncs() -> None:
    from edge.doctor import check_clock

    c = check_clock(None, at=60.0)  # 1970: a FAIL, whatever this machine's NTP state
    assert c.status == "fail" and "popular items per hour learn no picks" in (c.fix or ""), c
