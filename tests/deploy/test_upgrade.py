"""An upgrade as a technician does it: ``deploy/install.sh`` run again, with a newer ShelfCast, over an installed
and configured node (``--destdir`` scratch root, the same fast venv as tests/deploy/test_install.py).

The newer ShelfCast is a copy of this checkout's tracked files with one module added (``edge/_upgrade_probe.py``),
so the test can see whether the venv was replaced. The config check before the upgrade is what the run of
c31f3ee -> f568f4e needed: a token the installed version accepted and the new one refuses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROBE = f"opt/shelfcast/venv/lib/python3.{sys.version_info.minor}/site-packages/edge/_upgrade_probe.py"


def set_token(cfg: Path, token: str) -> None:
    c = yaml.safe_load(cfg.read_text())
    c.setdefault("signage", {})["admin_token"] = token
    cfg.write_text(yaml.safe_dump(c))


def test_upgrade_refused_before_the_venv_is_replaced_when_the_new_code_refuses_the_config(
        tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root)
    assert p.returncode == 0, p.stdout + p.stderr
    cfg = root / "etc/shelfcast/shelfcast.yaml"
    # a config the installed node ran with; the newer ShelfCast's rule (>= 16 characters) refuses it. The rule
    # exists in both here, so the "installed" node is simulated by editing after its install.
    set_token(cfg, "shelf-admin1")
    deploy.newer_source(tmp_path / "new")  # used as a relative --source from tmp_path below
    assert not (root / PROBE).exists()

    # a relative --source, as `sudo ./deploy/install.sh` types
    p = deploy.install(root, "--source", "new", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "signage.admin_token" in p.stderr and "openssl rand -hex 16" in p.stderr, p.stderr
    assert "nothing was replaced" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "shelf-admin1" not in p.stdout + p.stderr  # the token itself is masked
    assert not (root / PROBE).exists(), "the venv was replaced before the config was checked"
    actions = (root / "opt/shelfcast/install-actions.log").read_text()
    assert "systemctl restart shelfcast.service" not in actions, actions

    set_token(cfg, "0123456789abcdef0123")
    p = deploy.install(root, "--source", "new", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (root / PROBE).exists()
    actions = (root / "opt/shelfcast/install-actions.log").read_text().splitlines()
    # the node restarts once: stopped, the venv link switched to the new venv, started
    assert (actions.count("systemctl stop shelfcast.service"), actions.count("systemctl start shelfcast.service"),
            actions.count("systemctl restart shelfcast.service")) == (1, 1, 0), actions
    # the attached screen's page came from the old ShelfCast; one from before 0310387 never reloads by itself
    assert "systemctl --no-block try-restart shelfcast-kiosk.service" in actions, actions
    # the installer's own copy re-run (a config change, no new ShelfCast): the kiosk is left alone
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    actions = (root / "opt/shelfcast/install-actions.log").read_text().splitlines()
    assert "systemctl restart shelfcast.service" in actions and not [a for a in actions if "kiosk.service" in a
                                                                     and "restart" in a], actions


def test_upgrade_from_a_wheel_checks_the_config_first(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root)
    assert p.returncode == 0, p.stdout + p.stderr
    set_token(root / "etc/shelfcast/shelfcast.yaml", "short")
    new = deploy.newer_source(tmp_path / "new")
    wheels = tmp_path / "wheels"
    w = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(wheels), str(new)], capture_output=True, text=True, timeout=300)
    assert w.returncode == 0, w.stderr
    (wheel,) = wheels.glob("shelfcast-*.whl")
    p = deploy.install(root, "--source", str(wheel))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "signage.admin_token" in p.stderr and "nothing was replaced" in p.stderr, p.stderr
    assert "cannot be imported before it is installed" not in p.stdout, p.stdout  # checked from the wheel itself
    assert not (root / PROBE).exists()
