"""What the field tools say when the controller is not there: a port that does not exist, and a cable pulled
mid-flash that is not plugged back within --reconnect-timeout (real ptys, the simulator)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.cli import main as cli_main
from firmware_bridge import protocol as P
from firmware_bridge.flash import FlashError, flash, query
from firmware_bridge.image import build_image, read_image
from firmware_bridge.sim import SimulatedStore


def test_a_port_that_is_not_there_names_where_to_look(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = str(tmp_path / "ttyACM9")
    assert cli_main(["firmware", "list", "--port", port]) == 1
    out = capsys.readouterr().out
    # old code: "not present; waiting for the controller to be plugged in" (the node's words; list waits for nothing)
    assert "waiting" not in out and "check the USB cable" in out and "/dev/serial/by-id/" in out, out
    with pytest.raises(FlashError, match="check the USB cable"):
        query(port)


def test_cable_pulled_and_not_back_says_the_flash_resumes(tmp_path: Path) -> None:
    image = tmp_path / "fw.scfw"
    image.write_bytes(build_image(os.urandom(30_000), "SC-LC8-r2", (1, 5, 0)))
    with SimulatedStore(seed=8) as sim:
        c = sim.add_controller("c1", slot_count=4)
        c.faults.unplug_after_chunks = 40  # of ~157 chunks; never plugged back
        c.faults.replug_after_s = None
        with pytest.raises(FlashError) as err:
            flash(sim.port("c1"), read_image(image), reconnect_timeout=1.0)
        msg = str(err.value)
        assert "not present" in msg and "Waited 1 s" in msg, msg  # old code: "... waiting for the controller ..."
        assert "1.4.2 stays" in msg and "run the same flash again" in msg and "resumes" in msg, msg
        sim.replug("c1")  # plugged back: the staged part survived, the same flash resumes and finishes
        res = flash(sim.port("c1"), read_image(image), reconnect_timeout=5.0)
        assert res.new_version == "1.5.0" and res.resumed_from > 0, res
        assert query(sim.port("c1")).mode == P.MODE_APP
