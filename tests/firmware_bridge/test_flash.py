"""Flashing against the simulator's bootloader: happy path, refusals, cable pull, flaky line, fallback;
and the ``shelfcast firmware`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.cli import main as cli_main
from firmware_bridge import protocol as P
from firmware_bridge.flash import FlashError, flash, query
from firmware_bridge.image import build_image, read_image
from firmware_bridge.sim import NOBOOT_MARKER, SimulatedStore

PAYLOAD = os.urandom(40_000)


def image(payload: bytes = PAYLOAD, hw: str = "SC-LC8-r2", version: tuple[int, int, int] = (1, 5, 0)) -> bytes:
    return build_image(payload, hw, version)


def wrote_anything(sim: SimulatedStore, cid: str) -> bool:
    c = sim.controllers[cid]
    return c.mode == P.MODE_BOOTLOADER or any(
        isinstance(m, P.Reboot | P.FlashBegin | P.FlashData) for m in c.commands)


def test_flash_happy_path_verifies_and_boots_new_version() -> None:
    with SimulatedStore(seed=1) as sim:
        sim.add_controller("c1", slot_count=4)
        seen: list[tuple[int, int]] = []
        res = flash(sim.port("c1"), read_image(image()), lambda d, t: seen.append((d, t)))
        assert (res.old_version, res.new_version) == ("1.4.2", "1.5.0")
        assert res.bytes_sent == len(PAYLOAD) and res.reconnects == 0
        assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
        c = sim.controllers["c1"]
        assert c.firmware == (1, 5, 0) and c.mode == P.MODE_APP and c.previous is not None
        assert query(sim.port("c1")).firmware == (1, 5, 0)


def test_image_for_other_hardware_is_refused_before_a_byte_is_written() -> None:
    with SimulatedStore(seed=2) as sim:
        sim.add_controller("c1", slot_count=4)
        with pytest.raises(FlashError, match="nothing was written"):
            flash(sim.port("c1"), read_image(image(hw="SC-LC16-r1")))
        assert not wrote_anything(sim, "c1")
        assert sim.controllers["c1"].firmware == (1, 4, 2)


def test_bad_hash_is_refused_by_the_cli_before_touching_the_port(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatedStore(seed=3) as sim:
        sim.add_controller("c1", slot_count=4)
        blob = bytearray(image())
        blob[-1] ^= 0xFF
        f = tmp_path / "bad.scfw"
        f.write_bytes(bytes(blob))
        assert cli_main(["firmware", "flash", "--port", sim.port("c1"), str(f)]) == 2
        assert "SHA-256" in capsys.readouterr().err
        assert not wrote_anything(sim, "c1") and sim.controllers["c1"].commands == []


def test_cable_pull_mid_transfer_resumes_where_it_stopped() -> None:
    with SimulatedStore(seed=4) as sim:
        c = sim.add_controller("c1", slot_count=4)
        c.faults.unplug_after_chunks = 80  # of ~209 chunks
        c.faults.replug_after_s = 0.8
        res = flash(sim.port("c1"), read_image(image()), reconnect_timeout=10)
        assert res.reconnects >= 1
        assert res.new_version == "1.5.0" and c.firmware == (1, 5, 0)
        # resumed: only the chunks after the pull were staged again, not the whole image
        assert c.flash_chunks < 80 + (len(PAYLOAD) // P.FLASH_CHUNK) - 40


def test_flaky_line_retries_and_still_verifies() -> None:
    with SimulatedStore(seed=5) as sim:
        c = sim.add_controller("c1", slot_count=4)
        c.faults.corrupt_rate = 0.05  # frames from the controller
        c.faults.drop_rate = 0.05
        c.faults.rx_corrupt_rate = 0.05  # frames to the controller
        res = flash(sim.port("c1"), read_image(image()), timeout=0.15, retries=20)
        assert res.retries > 0 and res.new_version == "1.5.0"
        assert c.firmware == (1, 5, 0)


def test_image_that_does_not_boot_falls_back_to_previous() -> None:
    with SimulatedStore(seed=6) as sim:
        c = sim.add_controller("c1", slot_count=4)
        with pytest.raises(FlashError, match=r"fell back to 1\.4\.2"):
            flash(sim.port("c1"), read_image(image(NOBOOT_MARKER + PAYLOAD, version=(2, 0, 0))))
        assert c.firmware == (1, 4, 2) and c.mode == P.MODE_APP and c.boot_reason == P.BOOT_FALLBACK


def test_cli_pack_list_and_flash_with_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "fw.bin"
    raw.write_bytes(PAYLOAD[:5000])
    img = tmp_path / "fw.scfw"
    assert cli_main(["firmware", "pack", str(raw), "--hardware", "SC-LC8-r2", "--version", "1.6.1",
                     "--out", str(img)]) == 0
    with SimulatedStore(seed=7) as sim:
        sim.add_controller("c1", slot_count=4)
        sim.add_controller("c2", slot_count=8, hardware_id="SC-LC16-r1")
        capsys.readouterr()
        assert cli_main(["firmware", "list", "--json", "--port", sim.port("c1"), "--port", sim.port("c2")]) == 0
        rows = json.loads(capsys.readouterr().out)["controllers"]
        assert [(r["controller"], r["hardware"], r["firmware"], r["slots"]) for r in rows] == [
            ("c1", "SC-LC8-r2", "1.4.2", 4), ("c2", "SC-LC16-r1", "1.4.2", 8)]
        assert cli_main(["firmware", "flash", "--port", sim.port("c1"), str(img)]) == 0
        out = capsys.readouterr()
        assert "1.4.2 -> 1.6.1" in out.out and "100.0%" in out.err
        assert cli_main(["firmware", "flash", "--port", sim.port("c2"), str(img)]) == 3
        assert "nothing was written" in capsys.readouterr().err
    assert cli_main(["firmware", "pack", str(raw), "--hardware", "x", "--version", "1.2", "--out",
                     str(img)]) == 2


def test_sim_command_line_serves_ports() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "firmware_bridge.sim", "--controllers", "2", "--slots", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().split("\t") for _ in range(2)]
        assert [x[0] for x in lines] == ["shelf-1", "shelf-2"]
        deadline = time.monotonic() + 5
        while not os.path.exists(lines[1][1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        h = query(lines[1][1])
        assert h.controller_id == "shelf-2" and h.slot_count == 4
    finally:
        proc.terminate()
        proc.wait(5)


def test_port_held_by_the_node_is_reported_busy_not_fought_over() -> None:
    import serial

    with SimulatedStore(seed=8) as sim:
        sim.add_controller("c1", slot_count=4)
        held = serial.Serial(sim.port("c1"), 115200, timeout=0, exclusive=True)  # as the running node does
        try:
            with pytest.raises(FlashError, match="in use by another program") as err:
                flash(sim.port("c1"), read_image(image()))
            assert "`sudo systemctl stop shelfcast`" in str(err.value)  # the usual holder, and how to stop it
            assert not wrote_anything(sim, "c1")
        finally:
            held.close()


def test_cli_tare_and_calibrate_a_slot(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from firmware_bridge.physics import QUIET

    with SimulatedStore(seed=9) as sim:
        c = sim.add_controller("c1", slot_count=4, unit_g=[100.0] * 4, stock=[3] * 4, noise=QUIET)
        c.scale[2] = 0.97  # a factory scale 3 % off
        assert cli_main(["firmware", "tare", "--port", sim.port("c1"), "--slot", "2"]) == 0
        sim.place("c1", 2, 500.0)  # the technician's 500 g reference weight
        assert cli_main(["firmware", "calibrate", "--port", sim.port("c1"), "--slot", "2", "--grams", "500"]) == 0
        reading = (c.physics.render(np.full(50, sim.t_phys())).mean(axis=0)[2] - c.tare_g[2]) * c.scale[2]
        assert abs(reading - 500.0) < 1.0
        assert "calibrate slot 2 done" in capsys.readouterr().out
        assert cli_main(["firmware", "calibrate", "--port", sim.port("c1"), "--slot", "9", "--grams", "500"]) == 3
        assert "check the slot number" in capsys.readouterr().err
