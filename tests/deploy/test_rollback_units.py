"""``install.sh --rollback`` puts back the systemd units and the kiosk launcher of the version it goes back to.

Before, it switched the program only: an older ShelfCast then ran under the newer version's units (new ExecStart
flags, limits, sandboxing, a unit the old one does not know). Now each run keeps a copy of the units and launcher it
installed in the venv it installed them for (``/opt/shelfcast/venvs/<id>/shelfcast-system/``); ``--rollback`` puts
that copy back (a unit of ours the older version did not install is stopped, disabled and removed), runs
``systemctl daemon-reload`` before it restarts the node, and says what it put back.

Real installer runs in a ``--destdir`` scratch root (the ``deploy`` fixture); the "newer" ShelfCast is this checkout
with a changed unit, a changed kiosk launcher and one more unit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

UNITS = ("shelfcast.service", "shelfcast-firstboot.service", "shelfcast-kiosk.service")
EXEC = "ExecStart=/opt/shelfcast/venv/bin/shelfcast run --config /etc/shelfcast/shelfcast.yaml"


def installed(root: Path) -> dict[str, bytes]:
    """The units and the kiosk launcher as installed in the scratch root."""
    out = {u: (root / "etc/systemd/system" / u).read_bytes() for u in UNITS}
    out["launcher"] = (root / "opt/shelfcast/bin/shelfcast-kiosk").read_bytes()
    return out


def actions(root: Path) -> list[str]:
    return (root / "opt/shelfcast/install-actions.log").read_text().splitlines()


def own_installer(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The installer's own copy, as the guide has a technician run it (--rollback; a re-run after a new config)."""
    return subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root), *extra],
                          capture_output=True, text=True, timeout=300)


def newer_with_other_units(deploy: Any, dest: Path) -> Path:
    """A newer ShelfCast whose node unit has a new ExecStart flag and limit, whose kiosk launcher differs, and which
    installs one more unit."""
    new = deploy.newer_source(dest)
    svc = new / "deploy/systemd/shelfcast.service"
    text = svc.read_text()
    assert EXEC in text
    svc.write_text(text.replace(EXEC, EXEC + " --log-level info\nLimitNICE=-5"))
    launcher = new / "deploy/shelfcast-kiosk"
    launcher.write_text(launcher.read_text() + "# only in the newer launcher\n")
    (new / "deploy/systemd/shelfcast-extra.service").write_text(
        "[Unit]\nDescription=only in the newer ShelfCast\n[Service]\nExecStart=/bin/true\n"
        "[Install]\nWantedBy=multi-user.target\n")
    inst = new / "deploy/install.sh"
    text = inst.read_text()
    # the list of units it installs (in an installer before the kept copies: its loop over them)
    for line in ('UNITS="shelfcast.service shelfcast-firstboot.service"',
                 "for u in shelfcast.service shelfcast-firstboot.service; do"):
        if line in text:
            inst.write_text(text.replace(line, line.replace("firstboot.service", "firstboot.service "
                                                                                  "shelfcast-extra.service")))
            return new
    raise AssertionError("the installer's list of units is not where this test looks for it")


def test_rollback_puts_back_the_older_units_and_launcher_and_forward_again(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root)  # with the kiosk
    assert p.returncode == 0, p.stdout + p.stderr
    older = installed(root)
    extra = root / "etc/systemd/system/shelfcast-extra.service"

    p = deploy.install(root, "--source", str(newer_with_other_units(deploy, tmp_path / "new")),
                       installer=tmp_path / "new/deploy/install.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    newer = installed(root)
    assert b"LimitNICE=-5" in newer["shelfcast.service"] and newer["launcher"] != older["launcher"]
    assert extra.exists()

    p = own_installer(root, "--rollback")
    assert p.returncode == 0, p.stdout + p.stderr
    assert installed(root) == older, "the older program runs under the newer version's units"
    assert not extra.exists()
    acts = actions(root)
    assert "systemctl disable --now shelfcast-extra.service" in acts, acts
    # systemd reads the older units before the node is started again under them
    assert acts.index("systemctl daemon-reload") < acts.index("systemctl stop shelfcast.service") \
        < acts.index("systemctl start shelfcast.service"), acts
    out = p.stdout
    for what in ("wrote /etc/systemd/system/shelfcast.service", "wrote /opt/shelfcast/bin/shelfcast-kiosk",
                 "removed /etc/systemd/system/shelfcast-extra.service", "put back 2 file(s)", "removed 1 unit(s)",
                 "daemon-reload"):
        assert what in out, out
    assert "wrote /etc/systemd/system/shelfcast-firstboot.service" not in out, out  # unchanged: not rewritten

    # a re-run of the installer's own copy (the next step after `shelfcast provision`) keeps the older units
    p = own_installer(root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert installed(root) == older and not extra.exists(), p.stdout

    p = own_installer(root, "--rollback")  # and forward again: the newer units, the extra one enabled again
    assert p.returncode == 0, p.stdout + p.stderr
    assert installed(root) == newer and extra.exists()
    assert "systemctl enable shelfcast-extra.service" in actions(root)
    assert "enabled shelfcast-extra.service" in p.stdout, p.stdout


def test_rollback_to_a_venv_without_kept_units_says_so_and_switches_the_program(tmp_path: Path, deploy: Any) -> None:
    """A venv installed by an installer before this change (0.3.0) kept no units: the program goes back, the units
    stay, and the output says so and how to get the old ones; going forward again works."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(deploy.REPO), "archive", "19ba142", "deploy", "pyproject.toml"],
                             capture_output=True, timeout=60)
    assert archive.returncode == 0, f"this test needs commit 19ba142: git fetch --unshallow; {archive.stderr!r}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=60)
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.REPO), installer=old / "deploy/install.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    first = (root / "opt/shelfcast/venv").resolve()
    assert not (first / "shelfcast-system").exists()
    p = deploy.install(root, "--no-kiosk", "--source", str(newer_with_other_units(deploy, tmp_path / "new")),
                       installer=tmp_path / "new/deploy/install.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    second = (root / "opt/shelfcast/venv").resolve()
    newer = (root / "etc/systemd/system/shelfcast.service").read_bytes()

    p = own_installer(root, "--rollback")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (root / "opt/shelfcast/venv").resolve() == first
    assert f"venvs/{first.name} keeps no copy of its units" in p.stdout and "section 8" in p.stdout, p.stdout
    assert (root / "etc/systemd/system/shelfcast.service").read_bytes() == newer  # left as they were
    p = own_installer(root, "--rollback")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (root / "opt/shelfcast/venv").resolve() == second
    assert "the installed units and launcher are" in p.stdout, p.stdout
