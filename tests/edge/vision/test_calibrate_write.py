"""`shelfcast calibrate camera --write` on real files through the real CLI (a subprocess).

B1: the rewritten config keeps its mode, owner and group (a node's /etc/shelfcast/shelfcast.yaml is
root:shelfcast 0640 and the service user must still read it after `sudo shelfcast calibrate camera --write`).
B2: it works on the one-line flow-style camera section that `shelfcast provision` writes.
"""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edge.config import load_config
from edge.vision.config_edit import set_homography, yaml_number

REPO = Path(__file__).resolve().parents[3]
SHELFCAST = Path(sys.executable).with_name("shelfcast")
POINTS = ["--point", "102,388:0,0", "--point", "541,392:4,0", "--point", "530,95:4,3", "--point", "110,90:0,3",
          "--point", "320,240:2,1.5", "--point", "200,150:1,2.5"]
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user/group needs root")
H = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-4.3e-06, 1e-05, 1.0]]


def _run(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    if user is not None:
        return _run_as(user, *args)
    assert SHELFCAST.exists(), f"{SHELFCAST} missing: pip install -e . in the venv"
    return subprocess.run([str(SHELFCAST), *args], capture_output=True, text=True, timeout=120, cwd="/")


def _run_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's ``main`` in a forked child that has dropped to ``user`` (real uid, gid, no groups): the real
    syscalls fail as they do for that user. A fork rather than ``setpriv shelfcast``: the checkout and its venv may
    sit under a directory the user cannot enter (a CI clone under a 0700 temp dir), and the modules are loaded
    here before the drop."""
    import edge.cli
    import edge.vision.cli  # loaded before the child loses access to the checkout

    pw = pwd.getpwnam(user)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = os.fdopen(1, "w", closefd=False)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.chdir("/")
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = edge.cli.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as fo, os.fdopen(err_r) as fe:
        out, err = fo.read(), fe.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(["shelfcast", *args], os.waitstatus_to_exitcode(status), out, err)


def _calibrate_write(cfg: Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run("calibrate", "camera", "--config", str(cfg), *POINTS, "--write", "--no-preview", "--json", user=user)


def _written_h(r: subprocess.CompletedProcess[str]) -> list[list[float]]:
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["written"] is True
    return list(out["homography"])


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory 'nobody' can reach (pytest's tmp_path lives under a root-only 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="shelfcast-calwrite-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- B1: mode, owner, group ------------------------------------------------------------------------


def test_write_keeps_the_file_mode(tmp_path: Path) -> None:
    """Works for any user: the old code left every rewritten config 0600."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node: {store_id: s1}\ncamera:\n  enabled: true\n  source: synthetic\n")
    cfg.chmod(0o644)
    before = cfg.stat()
    h = _written_h(_calibrate_write(cfg))
    after = cfg.stat()
    assert _mode(cfg) == 0o644
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # replaced by rename, not rewritten in place
    assert load_config(cfg).camera.homography == h
    assert not list(tmp_path.glob(".shelfcast-*")), "temporary file left behind"


@AS_ROOT
def test_sudo_write_keeps_owner_group_and_mode(tmp_path: Path) -> None:
    """The audit's repro: a 0640 config of another owner/group (like root:shelfcast) keeps all three."""
    nobody, daemon = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("daemon").gr_gid
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node: {store_id: s1}\ncamera:\n  enabled: true\n  source: synthetic\n")
    os.chown(cfg, nobody, daemon)
    cfg.chmod(0o640)
    h = _written_h(_calibrate_write(cfg))
    st = cfg.stat()
    assert (st.st_uid, st.st_gid, _mode(cfg)) == (nobody, daemon, 0o640)
    assert load_config(cfg).camera.homography == h


@AS_ROOT
def test_write_without_permission_to_chown_warns_and_keeps_the_mode(open_dir: Path) -> None:
    """Not root and not in the file's group: the homography is written, the mode kept, and the warning says
    which `sudo chown` puts the owner back."""
    nobody = pwd.getpwnam("nobody")
    daemon = grp.getgrnam("daemon").gr_gid
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    cfg = open_dir / "c.yaml"
    cfg.write_text("camera:\n  enabled: true\n  source: synthetic\n")
    os.chown(cfg, nobody.pw_uid, daemon)
    cfg.chmod(0o640)
    r = _calibrate_write(cfg, user="nobody")
    h = _written_h(r)
    assert _mode(cfg) == 0o640
    assert cfg.stat().st_uid == nobody.pw_uid
    assert f"sudo chown nobody:daemon {cfg}" in r.stderr
    assert any("sudo chown nobody:daemon" in w for w in json.loads(r.stdout)["warnings"])
    assert "Traceback" not in r.stderr
    assert load_config(cfg).camera.homography == h


@AS_ROOT
def test_write_into_a_directory_it_cannot_write_is_a_clear_error(open_dir: Path) -> None:
    cfg = open_dir / "c.yaml"
    cfg.write_text("camera:\n  enabled: true\n  source: synthetic\n")
    cfg.chmod(0o644)
    open_dir.chmod(0o755)
    before = cfg.read_text()
    r = _calibrate_write(cfg, user="nobody")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot write {cfg}" in r.stderr and "sudo" in r.stderr and "homography: [" in r.stderr
    assert cfg.read_text() == before


def test_write_through_a_symlink_updates_the_target(tmp_path: Path) -> None:
    real = tmp_path / "real" / "shelfcast.yaml"
    real.parent.mkdir()
    real.write_text("camera:\n  enabled: true\n  source: synthetic\n")
    real.chmod(0o640)
    link = tmp_path / "shelfcast.yaml"
    link.symlink_to(real)
    h = _written_h(_calibrate_write(link))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _mode(real) == 0o640
    assert load_config(real).camera.homography == h


# -- B2: the flow-style camera section `shelfcast provision` writes -------------------------------


def test_write_into_a_provisioned_config(tmp_path: Path) -> None:
    """The documented flow: provision, enable the camera (one line, as provision wrote it), calibrate --write."""
    cfg = tmp_path / "shelfcast.yaml"
    shutil.copy(REPO / "deploy" / "etc" / "shelfcast.yaml", cfg)
    p = _run("provision", "--config", str(cfg), "--keys-dir", str(tmp_path / "keys"), "--store-id", "s",
             "--node-id", "n", "--no-qr")
    assert p.returncode == 0, p.stderr
    provisioned = cfg.read_text()
    assert "camera: {enabled: false}\n" in provisioned  # what this test is about: provision's flow style
    text = provisioned.replace("camera: {enabled: false}\n",
                               "camera: {enabled: true, source: synthetic}  # ceiling camera, aisle 3\n")
    text += "# technician note: kept\n"
    cfg.write_text(text)
    mode = _mode(cfg)
    before_raw = yaml.safe_load(text)

    h = _written_h(_calibrate_write(cfg))

    new = cfg.read_text()
    node = load_config(cfg)  # the node's own loader
    assert node.camera.homography == h
    assert node.camera.enabled is True and node.camera.source == "synthetic"
    assert node.node.store_id == "s" and node.node.node_id == "n"
    # same data apart from camera.homography
    after_raw = yaml.safe_load(new)
    assert after_raw["camera"].pop("homography") == h
    assert after_raw == before_raw
    # every line outside the camera section is unchanged, in order, comments included
    old_lines, new_lines = text.splitlines(), new.splitlines()
    i = old_lines.index("camera: {enabled: true, source: synthetic}  # ceiling camera, aisle 3")
    assert new_lines[:i] == old_lines[:i]
    assert new_lines[i] == "camera:  # ceiling camera, aisle 3"
    cam_block = list(itertools.takewhile(lambda ln: ln.startswith("  "), new_lines[i + 1:]))
    assert cam_block[:2] == ["  enabled: true", "  source: synthetic"] and cam_block[2].startswith("  homography:")
    assert new_lines[i + 1 + len(cam_block):] == old_lines[i + 1:]
    assert _mode(cfg) == mode
    # and again: the value is replaced, not duplicated
    h2 = _written_h(_calibrate_write(cfg))
    assert cfg.read_text().count("homography:") == 1 and load_config(cfg).camera.homography == h2


@AS_ROOT
def test_provision_then_sudo_calibrate_keeps_root_group_0640(tmp_path: Path) -> None:
    """Both bugs together, as on a node: provision, root:<service group> 0640, sudo calibrate --write."""
    cfg = tmp_path / "shelfcast.yaml"
    shutil.copy(REPO / "deploy" / "etc" / "shelfcast.yaml", cfg)
    assert _run("provision", "--config", str(cfg), "--keys-dir", str(tmp_path / "keys"), "--store-id", "s",
                "--node-id", "n", "--no-qr").returncode == 0
    cfg.write_text(cfg.read_text().replace("camera: {enabled: false}", "camera: {enabled: true, source: synthetic}"))
    daemon = grp.getgrnam("daemon").gr_gid
    os.chown(cfg, 0, daemon)
    cfg.chmod(0o640)
    h = _written_h(_calibrate_write(cfg))
    st = cfg.stat()
    assert (st.st_uid, st.st_gid, _mode(cfg)) == (0, daemon, 0o640)
    assert load_config(cfg).camera.homography == h


@pytest.mark.parametrize(("text", "expected_fragment"), [
    ("camera: {}\n", "camera:\n  homography: [["),
    ("camera: {enabled: true, homography: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}\n", "{enabled: true, homography: [["),
    ("camera: {enabled: true,  # on\n         source: synthetic}  # x\nnode: {store_id: s}\n",
     "source: synthetic, homography: [["),
    ("# only a comment\n", "# only a comment\ncamera:\n  homography: [["),
    ("node:\n  store_id: s\ncamera:\n  enabled: true\n  homography:\n    - [1, 0, 0]\n    - [0, 1, 0]\n"
     "    - [0, 0, 1]\n  source: synthetic\n", "  enabled: true\n  homography: [[1.0, 0.0, 0.0], [0.0, 1.0"),
    ("camera:\n  homography:\n  - [1, 0, 0]\n  - [0, 1, 0]\n  - [0, 0, 1]\n# end\n", "  homography: [[1.0, 0.0"),
    ("camera:\n  homography:   # old\n    [[1, 0, 0], [0, 1, 0],\n     [0, 0, 1]]\n", "# old\n    [[1.0, 0.0"),
])
def test_set_homography_other_layouts(text: str, expected_fragment: str) -> None:
    new = set_homography(text, H)
    assert new is not None and expected_fragment in new
    old = yaml.safe_load(text) or {}
    got = yaml.safe_load(new)
    assert got["camera"].pop("homography") == H
    old.setdefault("camera", {}).pop("homography", None)
    assert got == old
    for comment in (ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln):
        assert comment in new


def test_set_homography_refuses_what_it_cannot_place() -> None:
    assert set_homography("camera: [1, 2]\n", H) is None
    assert set_homography("- a\n- b\n", H) is None


def test_numbers_read_back_as_floats() -> None:
    for v in (1e-05, -4.29836469e-06, 1e16, 0.0096, 1.0, -0.0):
        s = yaml_number(v)
        assert yaml.safe_load(s) == v and isinstance(yaml.safe_load(s), float), s
