"""An idle screen (nobody in front: the zone's popular items for the hour) refreshes each minute; a set stamped
before the wall clock stepped back an hour must not freeze it for that hour. A real node (demo store, bundled
catalogue and model, SQLite, signage room), no broker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from importlib import resources
from pathlib import Path

from edge.app import Node
from edge.config import NodeConfig, parse_config


def test_an_idle_screen_refreshes_after_the_clock_steps_back(tmp_path: Path) -> None:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    raw["signage"].update({"port": 0})
    raw["mqtt"]["local"]["url"] = None
    config = NodeConfig.model_validate(raw)

    async def run() -> tuple[int, float, float]:
        node = Node(config)
        await node.start()
        try:
            room = node.signage
            assert room is not None
            sid = next(s.id for s in config.layout.screens if s.kind != "shelf_display")
            first = room.recommender.refresh(sid)
            node.bus.publish(first)
            assert room.handover() == 0  # fresh, nobody there: nothing to do
            # the set on screen was stamped an hour "ahead": the clock has stepped back since
            ahead = dataclasses.replace(first, t=time.time() + 3600.0, session=None, seq=first.seq + 1)
            node.bus.publish(ahead)
            n = room.handover()
            return n, ahead.t, node.screens.latest[sid].t
        finally:
            await node.stop()

    n, ahead_t, latest_t = asyncio.run(run())
    assert n >= 1
    assert latest_t < ahead_t - 3000  # replaced by a set stamped now
