"""`shelfcast support-bundle` keeps the newest bundles it wrote in the directory it writes to, and nothing else goes.

Before, every run left one more `shelfcast-support-<node>-<time>.tar.gz` (up to a few MB: the journal) in the
technician's directory on the node's SD card, forever. Now, after writing one, the newest 5 (`--keep N`; 0 keeps
all) of this node's bundles under the default name stay. Candidates are only files this command wrote: the
default name with this node's id and a time, and a tar.gz whose first member is in a `shelfcast-support-<time>/`
folder. Real `python -m edge support-bundle` processes, real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def bundle(cfg: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", "support-bundle", "--config", str(cfg), "--since=-1min",
                           *extra], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_older_bundles_of_this_node_go_the_newest_and_everything_else_stay(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"node": {"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "d")},
                                   "signage": {"enabled": False}}))
    real = tmp_path / "real.tar.gz"  # a bundle as the command writes it, to copy under older names
    r = bundle(cfg, tmp_path, "--out", str(real))
    assert r.returncode == 0, r.stderr
    home = tmp_path / "home"  # where the technician runs it
    home.mkdir()
    old = [home / f"shelfcast-support-n1-202611{day:02d}T101500.tar.gz" for day in range(1, 8)]  # 7 older visits
    for p in old:
        shutil.copy(real, p)
    kept = {  # none of these was written by this command for this node under its name: they stay
        "not a bundle": home / "shelfcast-support-n1-20260101T000000.tar.gz",
        "another node's": home / "shelfcast-support-n2-20260101T000000.tar.gz",
        "renamed": home / "shelfcast-support-n1-before-the-incident.tar.gz",
        "a link": home / "shelfcast-support-n1-20250101T000000.tar.gz",
        "in a subdirectory": home / "sub" / "shelfcast-support-n1-20250101T000000.tar.gz",
        "other": home / "notes.txt",
    }
    kept["not a bundle"].write_text("the technician's own notes\n")
    for what in ("another node's", "renamed", "in a subdirectory"):
        kept[what].parent.mkdir(exist_ok=True)
        shutil.copy(real, kept[what])
    os.symlink(old[0], kept["a link"])
    kept["other"].write_text("x\n")

    r = bundle(cfg, home)
    assert r.returncode == 0, r.stderr
    def written() -> set[Path]:  # the bundles the runs of this test wrote in home
        return set(home.glob("shelfcast-support-n1-*.tar.gz")) - set(old) - set(kept.values())

    assert len(written()) == 1, sorted(home.iterdir())
    # the new one and the 4 newest older ones stay; the 3 oldest went, and the output names them
    assert [p.exists() for p in old] == [False] * 3 + [True] * 4, sorted(home.iterdir())
    assert all(p.exists() or p.is_symlink() for p in kept.values()), sorted(home.iterdir())
    assert "removed 3 older support bundle(s) of n1" in r.stdout and old[0].name in r.stdout, r.stdout
    assert "--keep 0 keeps all" in r.stdout, r.stdout

    r = bundle(cfg, home, "--keep", "0")  # keeps every one
    assert r.returncode == 0, r.stderr
    assert [p.exists() for p in old] == [False] * 3 + [True] * 4 and "removed" not in r.stdout, r.stdout
    r = bundle(cfg, home, "--keep", "2")
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in old) and len(written()) <= 2, sorted(home.iterdir())
    assert all(p.exists() or p.is_symlink() for p in kept.values()), sorted(home.iterdir())

    r = bundle(cfg, home, "--keep", "-1")
    assert r.returncode == 2 and "--keep wants a whole number >= 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
