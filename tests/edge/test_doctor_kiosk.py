"""`shelfcast doctor` and the kiosk: with shelfcast-kiosk.service enabled but no SHELFCAST_KIOSK_URL in
/etc/shelfcast/kiosk.env, the attached screen shows only the welcome card (deploy/shelfcast-kiosk, 90d0c6e),
which the doctor used to pass over in silence. It now warns, naming the line to add and
`sudo systemctl restart shelfcast-kiosk`.

A scratch root holds the real unit file (deploy/systemd/shelfcast-kiosk.service, where the installer puts it)
and the link `systemctl enable` makes; the doctor's checks take that root as an argument, as check_sd_card
does. The real config loader reads a real config file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import doctor
from edge.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "shelfcast-kiosk.service"
LINE = "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/"
RESTART = "sudo systemctl restart shelfcast-kiosk"


def scratch_root(tmp_path: Path, *, installed: bool = True, enabled: bool = True) -> Path:
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (root / "etc" / "shelfcast").mkdir()
    if installed:
        (units / "shelfcast-kiosk.service").write_bytes(UNIT.read_bytes())
    if enabled:  # what `systemctl enable shelfcast-kiosk` makes (WantedBy=graphical.target)
        (units / "graphical.target.wants").mkdir()
        (units / "graphical.target.wants" / "shelfcast-kiosk.service").symlink_to(
            "/etc/systemd/system/shelfcast-kiosk.service")
    return root


def config(tmp_path: Path, screens: str = "[{id: dairy-screen, position: [1, 1], zone: dairy}]",
           port: int = 8080) -> Path:
    cfg = tmp_path / "shelfcast.yaml"
    cfg.write_text(f"node: {{data_dir: {tmp_path / 'data'}, store_id: s1, node_id: n1}}\n"
                   "shelves: {enabled: false}\ncamera: {enabled: false}\n"
                   f"signage: {{host: 0.0.0.0, port: {port}}}\n"
                   "layout:\n  zones: [{id: dairy, name: Dairy, polygon: [[0, 0], [8, 0], [8, 5], [0, 5]]}]\n"
                   f"  screens: {screens}\n")
    return cfg


@pytest.mark.parametrize("env", [None, "", "# SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/dairy-screen\n",
                                 "SHELFCAST_KIOSK_URL=\n", "OTHER=1\n"],
                         ids=["no-file", "empty", "commented-out", "empty-value", "other-line"])
def test_an_enabled_kiosk_without_a_url_warns_naming_the_line_and_the_restart(tmp_path: Path,
                                                                              env: str | None) -> None:
    root = scratch_root(tmp_path)
    if env is not None:
        (root / "etc" / "shelfcast" / "kiosk.env").write_text(env)
    checks = doctor.run_checks(config(tmp_path), query_firmware=False, broker_timeout_s=0.2, root=root)
    c = {c.name: c for c in checks}["kiosk"]  # old code: no kiosk check at all
    assert c.status == "warn", c
    assert "/etc/shelfcast/kiosk.env" in c.detail and "SHELFCAST_KIOSK_URL" in c.detail, c
    assert "welcome card" in c.detail, c
    assert f"{LINE}dairy-screen" in c.fix and RESTART in c.fix, c  # the one screen in the config, named
    assert str(root) not in c.detail + c.fix  # the paths a technician types, not the scratch root
    text = doctor.render(checks)
    assert f"fix: add the line {LINE}dairy-screen" in text, text


def test_the_fix_names_the_configured_port_and_the_screens_to_choose_from(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, port=8090, screens="[{id: dairy-screen, position: [1, 1], zone: "
                                    "dairy}, {id: aisle-screen, position: [2, 1], zone: dairy}]"))
    c = doctor.check_kiosk(cfg, root=scratch_root(tmp_path))
    assert c.status == "warn", c
    assert "SHELFCAST_KIOSK_URL=http://127.0.0.1:8090/screens/<screen id>" in c.fix, c
    assert "dairy-screen" in c.fix and "aisle-screen" in c.fix and RESTART in c.fix, c
    # without a usable config the line still comes, with the default port
    c = doctor.check_kiosk(None, root=scratch_root(tmp_path / "b"))
    assert c.status == "warn" and f"{LINE}<screen id>" in c.fix and RESTART in c.fix, c


def test_a_kiosk_with_a_url_passes_and_says_what_it_shows(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    (root / "etc" / "shelfcast" / "kiosk.env").write_text(
        "# the screen over the dairy shelves\nSHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/dairy-screen\n")
    c = doctor.check_kiosk(None, root=root)
    assert c.status == "pass", c
    assert "http://127.0.0.1:8080/screens/dairy-screen" in c.detail, c
    # systemd's EnvironmentFile= takes quotes off, and the last assignment wins
    (root / "etc" / "shelfcast" / "kiosk.env").write_text(
        "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/old\nSHELFCAST_KIOSK_URL=\"http://127.0.0.1:8080/\"\n")
    c = doctor.check_kiosk(None, root=root)
    assert c.status == "pass" and "http://127.0.0.1:8080/ " in c.detail + " " and "old" not in c.detail, c
    (root / "etc" / "shelfcast" / "kiosk.env").write_text(
        "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/old\nSHELFCAST_KIOSK_URL=\n")
    assert doctor.check_kiosk(None, root=root).status == "warn"  # emptied again: the launcher sees none


def test_no_kiosk_unit_or_a_disabled_one_is_not_a_warning(tmp_path: Path) -> None:
    c = doctor.check_kiosk(None, root=scratch_root(tmp_path / "a", installed=False, enabled=False))
    assert c.status == "skip" and "not installed" in c.detail, c  # `install.sh --no-kiosk`: a node with no screen
    c = doctor.check_kiosk(None, root=scratch_root(tmp_path / "b", enabled=False))
    assert c.status == "skip" and "not enabled" in c.detail, c
    assert "sudo systemctl enable --now shelfcast-kiosk" in c.detail, c


def test_an_unreadable_kiosk_env_is_a_warning_naming_it_not_a_crash(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    (root / "etc" / "shelfcast" / "kiosk.env").mkdir()  # not a file: reading it fails as an unreadable one does
    c = doctor.check_kiosk(None, root=root)
    assert c.status == "warn" and "/etc/shelfcast/kiosk.env" in c.detail, c
    assert "Traceback" not in c.detail and c.fix, c
