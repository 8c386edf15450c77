"""Node side of the shelf-controller serial link: protocol, driver, detection, simulator, flashing.

Integration surface (stable; the wire format is in ``docs/shelf-protocol.md``)::

    from firmware_bridge import ShelfBridge

    bridge = ShelfBridge(config: edge.config.NodeConfig,
                         on_event: Callable[[ShelfEvent], None],          # called on the event loop
                         planogram: Callable[[str, int], tuple[str | None, float | None]] | None = None,
                         ports: list[str] | None = None)                  # extra ports (demo, tests)
    await bridge.start()        # never raises for a missing/unplugged/forbidden port: see health()
    await bridge.stop()
    bridge.health() -> dict     # status, online, offline, events, controllers{id: counters, error}
    await bridge.show(shelf, slot, name, price, promo="") -> bool       # shelf-edge display
    await bridge.tare(shelf, slot=0xFF) -> bool
    await bridge.calibrate(shelf, slot, known_g) -> bool
    bridge.refresh_planogram()  # re-read unit weights after a planogram/catalogue change
    bridge.add_port(path)       # attach a port at run time

``planogram(shelf_id, slot)`` returns ``(sku, unit weight in grams)``; without it
the SKU comes from ``layout.shelves[].slots`` and every change counts as one
unit. A controller is mapped to a shelf by ``layout.shelves[].controller`` (the
id it announces in its HELLO); an unmapped controller's events use its own id
as the shelf id. Ports: ``shelves.ports`` (``"auto"`` or empty = discover by
``shelves.usb_ids``, default ``1209:5c5c``, named by ``/dev/serial/by-id``).

Simulator (tests, demo, benchmarks)::

    from firmware_bridge.sim import SimulatedStore
    with SimulatedStore() as sim:
        sim.add_controller("ctrl-a", slot_count=6, unit_g=[...])
        sim.port("ctrl-a")                         # a stable by-id style path to give the bridge
        sim.pick("ctrl-a", 2, units=1); sim.put(...); sim.knock(...)
        sim.inject_garbage(...); sim.faults(cid).drop_rate = 0.05; sim.unplug/replug/brownout/silence(...)
        sim.display("ctrl-a", 2)                  # what that slot's display shows

``python -m firmware_bridge.sim --controllers N`` does the same from a shell.
"""

from typing import Any

__all__ = ["CommandError", "ShelfBridge"]


_LAZY = {
    "CommandError": "firmware_bridge.room",
    "ShelfBridge": "firmware_bridge.room",
}


def __getattr__(name: str) -> Any:
    """Import on first use: ``shelfcast`` commands start fast and load only the rooms they run."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
