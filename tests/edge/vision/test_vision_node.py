"""The node wires vision and fusion: a simulated shopper's pick comes back attributed to their track."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Any

from edge.app import Node
from edge.config import NodeConfig, parse_config
from edge.events import ShelfEvent, ShopperEvent, TrackUpdate
from edge.vision import Pick, SyntheticScene


def _config(tmp: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    raw["shelves"]["enabled"] = False
    raw["signage"]["enabled"] = False
    raw["camera"].update({"enabled": True, "source": "synthetic", "fps": 15})
    return NodeConfig.model_validate(raw)


def test_node_attributes_scene_picks_through_fusion(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    scene = SyntheticScene(cfg.layout, n_shoppers=4, seed=5, t0=time.time(), stop_s=(3.0, 5.0),
                           picks_per_stop=(1, 2), pick_probability=1.0, start_at_shelves=True)

    async def run() -> tuple[list[ShopperEvent], list[TrackUpdate], dict[str, Any], int]:
        node = Node(cfg)
        node.synthetic_scene = scene
        got: list[ShopperEvent] = []
        tracks: list[TrackUpdate] = []
        picks: list[Pick] = []
        await node.start()
        try:
            node.bus.subscribe(ShopperEvent, got.append)
            node.bus.subscribe(TrackUpdate, tracks.append)

            def on_pick(p: Pick) -> None:  # the shelf controller reports what the shopper took
                picks.append(p)
                node.bus.publish(ShelfEvent(shelf=p.shelf, slot=p.slot, sku=p.sku, delta_units=-1, t=p.t + 0.3))

            node.vision.on_pick = on_pick
            deadline = time.monotonic() + 15
            while len(got) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            health = node.health()
        finally:
            await node.stop()
        return got, tracks, health, len(picks)

    got, tracks, health, n_picks = asyncio.run(run())
    assert health["rooms"]["vision"]["status"] == "ok"
    assert health["rooms"]["fusion"]["mode"] == "camera"
    assert tracks and n_picks >= 4 and len(got) >= 4
    attributed = [e for e in got if e.attributed]
    assert len(attributed) >= 3
    assert all(e.zone in {"produce", "dairy", "bakery", "drinks"} for e in got)
