"""ShelfBridge against simulated controllers over real ptys: events, displays, faults, health."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any

from edge.events import ShelfEvent
from firmware_bridge.driver import DIALOUT_FIX, discover, open_error_message
from firmware_bridge.physics import NoiseModel
from firmware_bridge.room import ShelfBridge
from firmware_bridge.sim import SimulatedStore


def test_picks_become_shelf_events_and_displays_show_text(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=1) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            events: list[ShelfEvent] = []
            br = rig.started(sim, events)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                await asyncio.sleep(1.0)  # the detector's first stable level
                sim.pick("ctrl-a", 1, 2)
                sim.pick("ctrl-a", 2, 1, delay=0.1)  # neighbour, same moment
                sim.put("ctrl-a", 3, 1, delay=0.2)
                await rig.until(lambda: len(events) >= 3, 20.0)
                await asyncio.sleep(1.0)
                got = sorted((e.shelf, e.slot, e.sku, e.delta_units, e.controller) for e in events)
                assert got == [("shelf-a", 1, "sku-1", -2, "ctrl-a"), ("shelf-a", 2, "sku-2", -1, "ctrl-a"),
                               ("shelf-a", 3, "sku-3", 1, "ctrl-a")]
                assert all(e.confidence > 0.5 and abs(e.t - time.time()) < 10 for e in events)

                assert await br.show("shelf-a", 2, "Crème fraîche 200 g", 2.49, "2 for 1")
                st = sim.display("ctrl-a", 2)
                assert st is not None and (st.name, st.price_cents, st.promo) == ("Creme fraiche 200 g", 249, "2 for 1")
                assert await br.show("shelf-a", 0, "x" * 60, None)
                st0 = sim.display("ctrl-a", 0)
                assert st0 is not None and len(st0.name) == 32 and st0.price_cents is None
                assert not await br.show("no-such-shelf", 0, "x", 1.0)
                assert not await br.show("shelf-a", 9, "x", 1.0)

                sim.brownout("ctrl-a")  # display RAM lost: the node restores it after HELLO
                await rig.until(lambda: br.health()["controllers"]["ctrl-a"]["reboots"] == 1)
                await rig.until(lambda: sim.display("ctrl-a", 2) is not None)
                assert br.health()["controllers"]["ctrl-a"]["boot_reason"] == "brown-out"
            finally:
                await br.stop()

    asyncio.run(main())


def test_garbage_corruption_and_drops_are_counted_and_sensing_continues(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=2) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS, noise=NoiseModel())
            events: list[ShelfEvent] = []
            br = rig.started(sim, events)
            await br.start()
            lag = 0.0
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                f = sim.faults("ctrl-a")
                f.corrupt_rate, f.drop_rate = 0.05, 0.02
                t_prev = time.monotonic()
                for _ in range(20):
                    sim.inject_garbage("ctrl-a", 20_000)
                    await asyncio.sleep(0.02)
                    now = time.monotonic()
                    lag = max(lag, now - t_prev - 0.02)
                    t_prev = now
                await asyncio.sleep(1.0)
                sim.pick("ctrl-a", 0, 1)
                await rig.until(lambda: any(e.slot == 0 for e in events), 20.0)
                h = br.health()["controllers"]["ctrl-a"]
                assert h["garbage_bytes"] >= 100_000 and h["resyncs"] > 0
                assert h["crc_errors"] > 0 and h["lost_frames"] > 0
                assert h["online"]
                assert [e.delta_units for e in events] == [-1]
                assert lag < 2.0  # the loop was never blocked by a flood of garbage
            finally:
                await br.stop()

    asyncio.run(main())


def test_unplug_replug_reconnects_and_keeps_sensing(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=3) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            events: list[ShelfEvent] = []
            br = rig.started(sim, events, reconnect_max_s=0.2)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                sim.unplug("ctrl-a")
                await rig.until(lambda: br.health()["online"] == 0)
                h = br.health()["controllers"]["ctrl-a"]
                assert h["link"] in ("missing", "lost") and h["error"]
                await asyncio.sleep(0.5)
                sim.replug("ctrl-a")
                await rig.until(lambda: br.health()["online"] == 1)
                await asyncio.sleep(1.0)
                sim.pick("ctrl-a", 2, 1)
                await rig.until(lambda: len(events) == 1, 20.0)
                assert events[0].slot == 2 and events[0].delta_units == -1
                h = br.health()["controllers"]["ctrl-a"]
                assert h["reconnects"] >= 1 and h["link"] == "open"
            finally:
                await br.stop()

    asyncio.run(main())


def test_silent_controller_goes_offline_and_comes_back(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=4) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            br = rig.started(sim, [], offline_after_s=0.5)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                sim.silence("ctrl-a", 3.0)
                await rig.until(lambda: br.health()["offline"] == 1, 20.0)
                assert br.health()["status"] == "degraded"
                await rig.until(lambda: br.health()["online"] == 1, 20.0)
                assert br.health()["status"] == "ok"
            finally:
                await br.stop()

    asyncio.run(main())


def test_unknown_protocol_version_is_an_error_for_that_controller_only(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=5) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            sim.add_controller("ctrl-future", slot_count=4, protocol_version=2)
            events: list[ShelfEvent] = []
            br = rig.started(sim, events)
            await br.start()
            try:
                await rig.until(lambda: br.health()["online"] == 1)
                await asyncio.sleep(1.0)
                h = br.health()
                bad = h["controllers"][sim.port("ctrl-future")]
                assert bad["protocol_errors"] > 0 and "protocol v2" in bad["error"] and not bad["online"]
                assert h["controllers"]["ctrl-a"]["online"]
                sim.pick("ctrl-a", 0, 1)
                await rig.until(lambda: len(events) == 1, 20.0)
            finally:
                await br.stop()

    asyncio.run(main())


def test_missing_port_is_reported_and_retried_without_exiting(tmp_path: Any, rig: Any) -> None:
    async def main() -> None:
        br = ShelfBridge(rig.config([str(tmp_path / "ttyACM9")], reconnect_max_s=0.1), lambda e: None,
                         startup_grace_s=0.3)
        await br.start()
        try:
            await asyncio.sleep(0.5)
            h = br.health()
            c = next(iter(h["controllers"].values()))
            assert c["link"] == "missing" and "plugged in" in c["error"] and h["status"] == "degraded"
            assert h["missing"] == ["ctrl-a"]  # the layout expects it
        finally:
            await br.stop()

    asyncio.run(main())


def test_permission_error_names_the_dialout_fix() -> None:
    state, msg = open_error_message("/dev/ttyACM0", PermissionError(errno.EACCES, "Permission denied"))
    assert state == "permission" and "sudo usermod -aG dialout shelfcast" in msg and DIALOUT_FIX in msg


def test_discovery_ignores_ports_without_our_usb_id(tmp_path: Any) -> None:
    # this machine has /dev/ttyS* without a USB id and no controller: nothing must be picked up
    assert discover(["1209:5c5c"], by_id_dir=str(tmp_path)) == []


def test_controller_is_set_to_the_configured_sample_rate_and_still_detects(rig: Any) -> None:
    async def main() -> None:
        with SimulatedStore(seed=6) as sim:
            c = sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS, rate_hz=10)
            events: list[ShelfEvent] = []
            br = rig.started(sim, events, sample_rate_hz=25)
            await br.start()
            try:
                await rig.until(lambda: c.rate_hz == 25)
                await asyncio.sleep(1.0)
                sim.pick("ctrl-a", 3, 2)
                await rig.until(lambda: len(events) == 1, 20.0)
                assert (events[0].slot, events[0].delta_units) == (3, -2)
            finally:
                await br.stop()

    asyncio.run(main())


def test_permission_denied_for_a_real_unprivileged_user_names_the_fix() -> None:
    """Run the bridge as `nobody` against a root-only pty: health says exactly how to fix it."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    master, slave = os.openpty()
    restore: list[tuple[str, int]] = []
    try:
        path = os.ttyname(slave)
        os.chmod(path, 0o600)
        code = (
            "import asyncio, json\n"
            "from edge.config import default_config\n"
            "from firmware_bridge import ShelfBridge\n"
            "async def main():\n"
            f"    br = ShelfBridge(default_config(shelves={{'ports': [{{'port': {path!r}}}]}}), print,"
            " startup_grace_s=0)\n"
            "    await br.start(); await asyncio.sleep(0.5)\n"
            "    print(json.dumps(br.health())); await br.stop()\n"
            "asyncio.run(main())\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # A checkout under `mktemp -d` (mode 0700) is not traversable by `nobody`: grant traverse-only (o+x)
        # on the ancestors of the checkout and the interpreter that lack it, for this test only.
        for d in {root, os.path.dirname(os.path.realpath(sys.executable))}:
            while d not in ("", "/"):
                mode = os.stat(d).st_mode
                if not mode & 0o001:
                    os.chmod(d, mode | 0o001)
                    restore.append((d, mode))
                d = os.path.dirname(d)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            code], capture_output=True, text=True, cwd=root, timeout=60,
                           env={**os.environ, "PYTHONPATH": root, "HOME": "/tmp"})
        assert r.returncode == 0, r.stderr[-2000:]
        h = json.loads(r.stdout.strip().splitlines()[-1])
        c = h["controllers"][path]
        assert c["link"] == "permission" and "sudo usermod -aG dialout shelfcast" in c["error"]
        assert h["status"] == "degraded"
        assert "permission denied" in r.stderr  # logged once, at ERROR
    finally:
        for d, mode in reversed(restore):
            os.chmod(d, mode & 0o7777)
        os.close(master)
        os.close(slave)
