"""The installer's last line is the technician's next step. After a first install it is `provision`; after a
re-run on a provisioned node (guide step 3, an upgrade, a restored /etc/shelfcast when replacing a node) it
used to say `provision` again, which would be wrong advice there: now it says `doctor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def install(deploy: Any, root: Path, *, kiosk: bool = False, lines: int = 1) -> str:
    """The installer's last ``lines`` lines (its next-step text)."""
    p = deploy.install(root, *([] if kiosk else ["--no-kiosk"]))
    assert p.returncode == 0, p.stdout + p.stderr
    return "\n".join(p.stdout.strip().splitlines()[-lines:])


def test_next_step_follows_the_config(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    first = install(deploy, root)
    assert "next: sudo shelfcast provision" in first, first
    conf = root / "etc/shelfcast/shelfcast.yaml"
    # what `shelfcast provision` (or a restored backup) leaves: flow style, a store id
    conf.write_text("node: {data_dir: /var/lib/shelfcast, store_id: store-0042, node_id: node-1}\n"
                    "signage: {host: 0.0.0.0, port: 8080}\n")
    again = install(deploy, root)
    assert "next: sudo shelfcast doctor" in again and "store-0042" in again, again  # old code: provision
    assert "shelfcast provision" not in again, again
    assert conf.read_text().startswith("node: {data_dir")  # the installer kept the config


def test_a_step_that_fails_says_where_it_stopped_and_to_run_again(tmp_path: Path, deploy: Any) -> None:
    """Under set -e a failing command stopped the installer with only that command's own message, leaving a
    half-done install and no word on what to do; it now names the step and says a re-run after the fix is safe."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "shelfcast").write_text("")  # a file where the config directory goes: mkdir fails
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 1, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("install.sh: stopped at line") and "mkdir -p" in last, p.stderr  # old code: mkdir's words
    assert "run the installer again" in last, last
    (root / "etc" / "shelfcast").unlink()  # fixed: the same command finishes
    assert "next: sudo shelfcast provision" in install(deploy, root)


def test_with_the_kiosk_the_next_steps_name_kiosk_env_until_it_has_a_url(tmp_path: Path, deploy: Any) -> None:
    """The kiosk unit is installed and enabled by default, but shows only a welcome card until kiosk.env names a
    screen's page (90d0c6e); the installer's last words did not say so."""
    root = tmp_path / "root"
    text = install(deploy, root, kiosk=True, lines=2)
    assert (root / "etc/systemd/system/shelfcast-kiosk.service").is_file()
    screen, last = text.splitlines()
    assert last.strip().startswith("next: sudo shelfcast provision"), text  # still the last line
    assert "/etc/shelfcast/kiosk.env" in screen and "welcome card" in screen, text  # old code: no such line
    assert "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/<screen id>" in screen, text
    assert "sudo systemctl restart shelfcast-kiosk" in screen, text
    env = root / "etc/shelfcast/kiosk.env"
    env.write_text("# SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/dairy-screen\nSHELFCAST_KIOSK_URL=\n")
    assert "kiosk.env" in install(deploy, root, kiosk=True, lines=2)  # commented out or empty: still none
    env.write_text("SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/dairy-screen\n")
    text = install(deploy, root, kiosk=True, lines=2)
    assert "kiosk.env" not in text and "next: sudo shelfcast provision" in text, text
    env.unlink()
    assert "kiosk.env" not in install(deploy, root, lines=2)  # --no-kiosk: no screen, nothing to say
