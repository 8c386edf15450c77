"""The technician's commands without sudo on an installed node, where /etc/shelfcast is 0750 root:shelfcast
and /var/lib/shelfcast 0750 shelfcast: the technician's user cannot even stat what is inside. pathlib's
exists() raises PermissionError there (Python 3.11), and doctor, provision, support-bundle and report died
with that traceback; firmware list called a config it could not read 'not a valid config'. Each now says to
use sudo.

Run as a real unprivileged process: as root, `unshare --user` drops every capability over the files here
(a directory with mode 0 is closed even to its owner)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def unprivileged(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge.cli", *args]
    if os.geteuid() == 0:
        ok = shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"], capture_output=True,
                                                        timeout=30).returncode == 0
        if not ok:
            if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
                pytest.fail("running as root needs `unshare --user` (util-linux, user namespaces) for this test")
            pytest.skip("as root this needs `unshare --user` to run without root's file access")
        cmd = ["unshare", "--user", *cmd]
    full_env = {k: v for k, v in os.environ.items() if k != "SHELFCAST_CONFIG"} | (env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=full_env)


@pytest.fixture
def closed(tmp_path: Path) -> Iterator[Path]:
    """A node's config and data dirs as a user outside the shelfcast group sees them: closed."""
    conf, data = tmp_path / "etc-shelfcast", tmp_path / "var-lib-shelfcast"
    conf.mkdir()
    data.mkdir()
    (conf / "shelfcast.yaml").write_text(f"node: {{store_id: s1, node_id: n1, data_dir: {data}}}\n")
    (data / "shelfcast.db").write_bytes(b"")
    conf.chmod(0)
    data.chmod(0)
    yield tmp_path
    conf.chmod(0o750)
    data.chmod(0o750)


def config(root: Path) -> str:
    return str(root / "etc-shelfcast" / "shelfcast.yaml")


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr


def test_doctor(closed: Path) -> None:
    r = unprivileged(["doctor", "--no-firmware", "--config", config(closed)])
    no_traceback(r)  # old code: PermissionError from Path.exists()
    assert r.returncode == 2, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FAIL  config"))
    assert "cannot read it as" in line and "sudo shelfcast doctor" in r.stdout, r.stdout


@pytest.mark.parametrize(("args", "how"), [
    (["provision", "--store-id", "s1", "--node-id", "n1"], "sudo shelfcast provision"),
    (["support-bundle"], "sudo shelfcast support-bundle"),
])
def test_provision_and_support_bundle(closed: Path, args: list[str], how: str) -> None:
    r = unprivileged([*args, "--config", config(closed)])
    no_traceback(r)  # old code: PermissionError from Path.exists()
    assert r.returncode == 2 and "cannot read" in r.stderr and how in r.stderr, r.stderr


def test_report(closed: Path) -> None:
    r = unprivileged(["report", "--data-dir", str(closed / "var-lib-shelfcast")])
    no_traceback(r)  # old code: PermissionError from Path.exists()
    assert r.returncode == 2 and "sudo shelfcast report" in r.stderr, r.stderr


def test_firmware_list(closed: Path) -> None:
    r = unprivileged(["firmware", "list"], env={"SHELFCAST_CONFIG": config(closed)})
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "cannot read" in r.stderr and "run it with sudo" in r.stderr, r.stderr  # old code: "not a valid config"


@pytest.mark.parametrize("args", [["config", "validate"], ["calibrate", "camera", "--grab", "/tmp/x.png", "--config"],
                                  ["run", "--config"]])
def test_commands_that_load_the_config_say_sudo(closed: Path, args: list[str]) -> None:
    r = unprivileged([*args, config(closed)])
    no_traceback(r)
    assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
    assert "run the command with sudo" in r.stderr, r.stderr  # old code: "cannot read: Permission denied" only
