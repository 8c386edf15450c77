"""A shelf line that carries only garbage for a while, or nothing, over a real pty: the controller goes
offline, health says why (not just "offline" with an empty error), and it all recovers by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge.config import default_config
from edge.events import ShelfEvent
from firmware_bridge.room import ShelfBridge
from firmware_bridge.sim import SimulatedStore


def test_a_line_of_pure_garbage_says_so_then_recovers(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=21) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            events: list[ShelfEvent] = []
            br = rig.started(sim, events, offline_after_s=0.5)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                f = sim.faults("ctrl-a")
                f.corrupt_rate = 1.0  # every frame the controller sends arrives damaged
                for _ in range(15):
                    sim.inject_garbage("ctrl-a", 500)
                    await asyncio.sleep(0.1)
                h = br.health()
                c = h["controllers"]["ctrl-a"]
                assert h["status"] == "degraded" and not c["online"] and c["link"] == "open"
                assert "only garbage" in c["error"] and "cable" in c["error"], c["error"]  # old code: ""
                f.corrupt_rate = 0.0
                await rig.until(lambda: br.health()["online"] == 1)
                h = br.health()
                assert h["status"] == "ok" and h["controllers"]["ctrl-a"]["error"] == ""
                await asyncio.sleep(1.0)
                sim.pick("ctrl-a", 1, 1)
                await rig.until(lambda: len(events) == 1)
                assert (events[0].slot, events[0].delta_units) == (1, -1)
            finally:
                await br.stop()

    asyncio.run(main())


def test_a_silent_controller_says_silent(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=22) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            br = rig.started(sim, [], offline_after_s=0.5)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                sim.silence("ctrl-a", 3.0)
                await rig.until(lambda: br.health()["offline"] == 1)
                c = br.health()["controllers"]["ctrl-a"]
                assert "silent" in c["error"] and "power-cycle" in c["error"], c["error"]  # old code: ""
                await rig.until(lambda: br.health()["online"] == 1)
                assert br.health()["controllers"]["ctrl-a"]["error"] == ""
            finally:
                await br.stop()

    asyncio.run(main())


def test_a_port_that_is_not_a_serial_device_names_the_fix(tmp_path: Path, rig: Any) -> None:
    """A typo in shelves.ports pointing at a file or a directory: old code said only 'cannot open: Could not
    configure port: (25, 'Inappropriate ioctl for device')'."""
    plain = tmp_path / "ttyACM0.txt"
    plain.write_text("")

    async def main() -> list[dict[str, Any]]:
        out = []
        for port in (plain, tmp_path):
            cfg = default_config(shelves={"ports": [{"port": str(port)}], "reconnect_max_s": 0.1})
            br = ShelfBridge(cfg, lambda e: None, startup_grace_s=0.0)
            await br.start()
            try:
                await rig.until(lambda b=br: next(iter(b.health()["controllers"].values()))["error"] != "")
                out.append(br.health())
            finally:
                await br.stop()
        return out

    for h in asyncio.run(main()):
        c = next(iter(h["controllers"].values()))
        assert h["status"] == "degraded"
        assert "not a serial port" in c["error"] and "shelves.ports" in c["error"], c["error"]
