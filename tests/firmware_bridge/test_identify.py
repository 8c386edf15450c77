"""`shelfcast firmware identify`: which shelf is which controller (and which slot is which) for mapping
layout.shelves, shown on the controller's own shelf-edge displays over a real pty, then cleared. There was no
way but unplugging cables one by one."""

from __future__ import annotations

import pytest

from edge.cli import main as cli_main
from firmware_bridge.flash import identify
from firmware_bridge.protocol import Hello
from firmware_bridge.sim import SimulatedStore


def test_identify_shows_the_id_and_slots_then_clears(capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatedStore(seed=6) as sim:
        c = sim.add_controller("dairy-left", slot_count=4)
        rc = cli_main(["firmware", "identify", "--port", sim.port("dairy-left"), "--seconds", "0.3"])
        out = capsys.readouterr().out
        assert rc == 0, out  # old code: no such command (exit 2)
        assert "controller: dairy-left" in out and "displays cleared" in out, out
        shown = {(slot, st.name, st.promo) for slot, st in c.display_log}
        assert shown == {(n, "dairy-left", f"slot {n}") for n in range(4)}, shown
        assert all(sim.display("dairy-left", n) is None for n in range(4))  # shoppers never see IDENTIFY after


def test_ctrl_c_clears_the_displays_too() -> None:
    with SimulatedStore(seed=7) as sim:
        sim.add_controller("c1", slot_count=3)

        def interrupt(h: Hello) -> None:
            assert all(sim.display("c1", n) is not None for n in range(3))
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            identify(sim.port("c1"), 60.0, interrupt)
        assert all(sim.display("c1", n) is None for n in range(3))


def test_a_controller_without_displays_says_how_to_find_it(capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatedStore(seed=8) as sim:
        sim.add_controller("c2", slot_count=2, has_display=False)
        assert cli_main(["firmware", "identify", "--port", sim.port("c2"), "--seconds", "0"]) == 3
        err = capsys.readouterr().err
        assert "no shelf-edge displays" in err and "unplugging" in err, err
