"""Privacy: the calibration snapshot, its pixel-grid copy and the preview are camera frames (shoppers may be in
them). They are written only when a technician runs `calibrate camera`, and never world- or group-readable, even
under root's usual umask 022 (`sudo shelfcast calibrate camera ...`) or over an older, readable file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


CAMERA = {"enabled": True, "source": "synthetic"}  # demo_yaml(tmp_path, camera=CAMERA): the grab's config


def shelfcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # umask 022: what `sudo` and a login shell give; the files must be private regardless
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          preexec_fn=lambda: os.umask(0o022))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_grab_writes_the_snapshot_and_grid_owner_only(tmp_path: Path, demo_yaml: Any) -> None:
    cfg = demo_yaml(tmp_path, camera=CAMERA)
    snap = tmp_path / "snapshot.png"
    r = shelfcast("calibrate", "camera", "--config", str(cfg), "--grab", str(snap))
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "snapshot-grid.png"
    assert snap.stat().st_size > 1000 and grid.stat().st_size > 1000
    assert mode(snap) == 0o600, oct(mode(snap))  # old code: 0o644, any user of the node could read the frame
    assert mode(grid) == 0o600, oct(mode(grid))


def test_preview_is_owner_only_and_an_old_readable_file_is_tightened(tmp_path: Path, demo_yaml: Any) -> None:
    cfg = demo_yaml(tmp_path, camera=CAMERA)
    preview = tmp_path / "camera-calibration.png"
    preview.write_bytes(b"old")
    preview.chmod(0o644)
    r = shelfcast("calibrate", "camera", "--config", str(cfg), "--synthetic", "--preview", str(preview))
    assert r.returncode == 0, r.stderr
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the new image replaced the old bytes
    assert mode(preview) == 0o600, oct(mode(preview))


def test_nothing_is_written_without_a_technician_asking(tmp_path: Path, demo_yaml: Any) -> None:
    # --no-preview: no frame grabbed, no image anywhere in the working directory or beside the config
    cfg = demo_yaml(tmp_path, camera=CAMERA)
    r = subprocess.run([sys.executable, "-m", "edge", "calibrate", "camera", "--config", str(cfg), "--synthetic",
                        "--no-preview"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.rglob("*.png")), list(tmp_path.rglob("*.png"))


def test_an_unwritable_image_path_is_named_not_a_traceback(tmp_path: Path, demo_yaml: Any) -> None:
    cfg = demo_yaml(tmp_path, camera=CAMERA)
    r = shelfcast("calibrate", "camera", "--config", str(cfg), "--grab", str(tmp_path / "no" / "s.png"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_under_sudo_the_snapshot_belongs_to_the_technician(tmp_path: Path, demo_yaml: Any) -> None:
    # 0600 root-owned would lock out the technician's image viewer; as root with SUDO_UID the file is theirs,
    # as anyone else SUDO_UID is ignored and the file is the caller's
    tmp_path.chmod(0o755)
    cfg = demo_yaml(tmp_path, camera=CAMERA)
    snap = tmp_path / "s.png"
    r = shelfcast("calibrate", "camera", "--config", str(cfg), "--grab", str(snap),
                  env={"SUDO_UID": "65534", "SUDO_GID": "65534"})
    assert r.returncode == 0, r.stderr
    want = 65534 if os.geteuid() == 0 else os.geteuid()
    assert (snap.stat().st_uid, mode(snap)) == (want, 0o600)
    assert (tmp_path / "s-grid.png").stat().st_uid == want
