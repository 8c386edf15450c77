"""`shelfcast doctor` as the guide writes it (no sudo) on an installed node, where /etc/shelfcast is 0750
root:shelfcast: the technician's user cannot even stat the config. It used to crash with a PermissionError
traceback (pathlib's exists() raises it in Python 3.11); now the config check says to use sudo.

Run as a real unprivileged process: as root, `unshare --user` drops every capability over the files here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def unprivileged(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge.cli", *args]
    if os.geteuid() == 0:
        ok = shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"], capture_output=True,
                                                        timeout=30).returncode == 0
        if not ok:
            if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
                pytest.fail("running as root needs `unshare --user` (util-linux, user namespaces) for this test")
            pytest.skip("as root this needs `unshare --user` to run without root's file access")
        cmd = ["unshare", "--user", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_doctor_without_sudo_says_sudo(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc-shelfcast"
    conf_dir.mkdir()
    (conf_dir / "shelfcast.yaml").write_text("node: {store_id: s1, node_id: n1}\n")
    conf_dir.chmod(0)  # like /etc/shelfcast (0750 root:shelfcast) for a user outside the shelfcast group
    try:
        r = unprivileged(["doctor", "--no-firmware", "--config", str(conf_dir / "shelfcast.yaml")])
    finally:
        conf_dir.chmod(0o750)
    assert "Traceback" not in r.stderr, r.stderr  # old code: PermissionError from Path.exists()
    assert r.returncode == 2, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FAIL  config"))
    assert "cannot read it as" in line, r.stdout
    assert "sudo shelfcast doctor" in r.stdout, r.stdout
