"""Shelf displays: a screen of kind shelf_display shows its zone's top item on the slot's display,
through firmware_bridge's SHOW frame over a real pty to the simulated controller."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from edge.app import Node
from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent
from firmware_bridge.demo_shelves import DemoShelves
from firmware_bridge.protocol import sanitize_text


def test_top_item_reaches_the_shelf_display(make_node: Callable[..., Any], tmp_path: Path,
                                            monkeypatch: Any) -> None:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path / "n")
    raw["signage"]["port"] = 0
    cfg = NodeConfig.model_validate(raw)
    shelves = DemoShelves(cfg, seed=1)
    orig_init = Node.__init__

    def init(self: Node, config: NodeConfig) -> None:
        orig_init(self, config)
        self.extra_shelf_ports = shelves.ports

    monkeypatch.setattr(Node, "__init__", init)
    try:
        n = make_node(cfg)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (n.node.shelves and any(
                c.online and c.hello is not None for c in n.node.shelves.controllers.values()
                if c.shelf == "dairy-1")):
            time.sleep(0.05)
        n.publish(ShopperEvent(session="disp-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1",
                               slot=0))
        top = n.json("/api/screens/dairy-1-edge/recommendations")["items"][0]
        want = sanitize_text(top["name"], 32)
        shown = None
        while time.monotonic() < deadline:
            shown = shelves.sim.display("ctrl-dairy-1", 0)
            if shown is not None and shown.name == want:
                break
            time.sleep(0.05)
        assert shown is not None and shown.name == want, (shown, want, n.node.signage.stats)
        assert shown.price_cents == round(top["price"] * 100)
        assert n.node.signage.stats["display_shows"] >= 1
    finally:
        shelves.close()
