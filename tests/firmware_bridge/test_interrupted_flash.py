"""A firmware flash the technician interrupts (Ctrl-C, a closed laptop) leaves the controller in its bootloader,
over real ptys: the node's health says so and how to recover (it used to report the shelf "ok" while it sent no
weights), the flash command says where it stopped, and running it again resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge.events import ShelfEvent
from firmware_bridge import protocol as P
from firmware_bridge.flash import Flasher, query
from firmware_bridge.image import build_image, read_image
from firmware_bridge.sim import SimulatedStore

REPO = Path(__file__).resolve().parents[2]


def stop_in_bootloader(port: str, image: Path, chunks: int = 20) -> None:
    """What an interrupted `shelfcast firmware flash` leaves: the controller rebooted into its bootloader with
    part of the image staged, and the tool gone."""
    img = read_image(image)
    with Flasher(port) as f:
        f.to_bootloader()
        assert f.request(P.FlashBegin(img.header)).status == P.Status.OK
        for i in range(chunks):
            off = i * P.FLASH_CHUNK
            assert f.request(P.FlashData(off, img.payload[off:off + P.FLASH_CHUNK])).status == P.Status.OK


def test_controller_left_in_its_bootloader_is_degraded_with_the_fix(tmp_path: Path, rig: Any) -> None:
    image = tmp_path / "fw.scfw"
    image.write_bytes(build_image(os.urandom(20_000), "SC-LC8-r2", (1, 9, 0)))

    async def main() -> None:
        with SimulatedStore(seed=5) as sim:
            sim.add_controller("ctrl-a", slot_count=4, unit_g=rig.UNITS)
            port = sim.port("ctrl-a")
            stop_in_bootloader(port, image)
            assert query(port).mode == P.MODE_BOOTLOADER
            events: list[ShelfEvent] = []
            br = rig.started(sim, events, offline_after_s=0.5)
            await br.start()
            try:
                await rig.until(lambda: br.health()["controllers"].get("ctrl-a", {}).get("mode") == "bootloader")
                await asyncio.sleep(1.0)  # past offline_after_s: the bootloader's heartbeats keep the link up
                h = br.health()
                c = h["controllers"]["ctrl-a"]
                assert h["status"] == "degraded", h  # old code: "ok"
                assert "bootloader" in c["error"] and "firmware flash --port" in c["error"], c["error"]  # old: ""
                assert "power-cycle" in c["error"] and "1.4.2" in c["error"]
                # power-cycling it (USB replug) boots the firmware it had: healthy again, picks arrive
                sim.unplug("ctrl-a")
                await asyncio.sleep(0.3)
                sim.replug("ctrl-a")
                await rig.until(lambda: br.health()["controllers"]["ctrl-a"].get("mode") == "app")
                h = br.health()
                assert h["status"] == "ok" and h["controllers"]["ctrl-a"]["error"] == "", h
                await asyncio.sleep(1.0)
                sim.pick("ctrl-a", 1, 1)
                await rig.until(lambda: any(e.slot == 1 for e in events))
            finally:
                await br.stop()

    asyncio.run(main())


def test_ctrl_c_during_a_flash_says_where_it_stopped_and_a_rerun_resumes(tmp_path: Path) -> None:
    """The real CLI against the simulator in its own process; SIGINT mid-transfer as Ctrl-C sends it."""
    sim = subprocess.Popen([sys.executable, "-m", "firmware_bridge.sim", "--controllers", "1", "--picks-per-hour",
                            "0", "--dir", str(tmp_path / "dev")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, cwd=REPO)
    try:
        assert sim.stdout is not None
        port = sim.stdout.readline().split("\t")[1]
        img = tmp_path / "big.scfw"
        img.write_bytes(build_image(os.urandom(6_000_000), "SC-LC8-r2", (1, 7, 0)))
        cmd = [sys.executable, "-m", "edge.cli", "firmware", "flash", "--port", port, str(img)]
        flash = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert flash.stderr is not None
        seen = ""
        while "flashing [" not in seen or "  0.0%" in seen.rsplit("\r", 1)[-1]:  # data is moving
            ch = flash.stderr.read(1)
            assert ch, "the flash ended before it started sending"
            seen += ch
        time.sleep(0.5)
        flash.send_signal(signal.SIGINT)
        _, err = flash.communicate(timeout=30)
        err = seen + err
        assert flash.returncode == 130, err
        assert "Traceback" not in err, err
        last = err.rstrip().splitlines()[-1]
        # old code: nothing after the progress bar
        assert "interrupted" in last and "bootloader" in last and "1.4.2" in last, last
        assert f"shelfcast firmware flash --port {port}" in last and "resumes" in last, last
        assert "KiB" in last  # how far it got
        assert query(port).mode == P.MODE_BOOTLOADER
        again = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert again.returncode == 0, again.stderr
        res = json.loads(again.stdout)
        assert res["new_version"] == "1.7.0" and res["resumed_from"] > 0, res
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
