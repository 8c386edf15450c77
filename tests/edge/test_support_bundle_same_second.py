"""Two `shelfcast support-bundle` runs in the same second (a script, or a technician running it twice quickly) keep
both bundles: the default name is created exclusively, with -2, -3... after the first of a second, and the folder
inside says the same; `--keep` orders them (-2 after the first, -10 after -9). A link planted at the default name
is never followed. `--out FILE` given by the user is written over, as it always was.

Old code: the second run wrote over the first (one file, the first bundle lost), and followed a link at the name.

The real command line in-process (`run_cli`), real files; the clock's second is held still for the name (the only
fake: two real runs cannot be made to fall in the same second)."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

SECOND = "20261201T101500"


def _members(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


@pytest.fixture
def node_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node config (n1, screens off) and the directory the technician runs the command in (the cwd); every
    bundle name the command makes falls in the second ``SECOND``."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"node": {"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "d")},
                                   "signage": {"enabled": False}}))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    real = time.strftime

    def held(fmt: str, *t: Any) -> str:
        return SECOND if fmt == "%Y%m%dT%H%M%S" and not t else real(fmt, *t)

    monkeypatch.setattr(time, "strftime", held)
    return tmp_path


def test_two_bundles_in_the_same_second_are_both_kept(node_dir: Path, run_cli: Any) -> None:
    cfg, home = node_dir / "node.yaml", node_dir / "home"
    first, second = (home / f"shelfcast-support-n1-{SECOND}.tar.gz", home / f"shelfcast-support-n1-{SECOND}-2.tar.gz")
    r = run_cli("support-bundle", "--config", str(cfg), "--since=-1min")
    assert r.returncode == 0, r.stderr
    assert str(first) in r.stdout, r.stdout
    before = first.read_bytes()
    r = run_cli("support-bundle", "--config", str(cfg), "--since=-1min")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in home.iterdir()} == {first.name, second.name}, "the second run overwrote the first"
    assert first.read_bytes() == before and str(second) in r.stdout, r.stdout
    for path, folder in ((first, f"shelfcast-support-{SECOND}/"), (second, f"shelfcast-support-{SECOND}-2/")):
        names = _members(path)  # both whole bundles, unpacking side by side
        assert names[0].startswith(folder) and all(n.startswith(folder) for n in names), names
        assert {folder + "README.txt", folder + "doctor.json", folder + "config.yaml"} <= set(names), names
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_keep_orders_bundles_of_one_second_and_a_link_at_the_name_is_not_followed(node_dir: Path,
                                                                                  run_cli: Any) -> None:
    cfg, home = node_dir / "node.yaml", node_dir / "home"
    real = node_dir / "real.tar.gz"  # a bundle as the command writes it, to copy under older names
    r = run_cli("support-bundle", "--config", str(cfg), "--since=-1min", "--out", str(real), "--keep", "0")
    assert r.returncode == 0, r.stderr
    earlier = "20261130T090000"
    old = {n: home / f"shelfcast-support-n1-{earlier}{'' if n == 1 else f'-{n}'}.tar.gz" for n in (1, 2, 9, 10)}
    for p in old.values():
        shutil.copy(real, p)
    target = node_dir / "not-yours.txt"  # someone plants a link at the name the next run would take
    os.symlink(target, home / f"shelfcast-support-n1-{SECOND}.tar.gz")
    r = run_cli("support-bundle", "--config", str(cfg), "--since=-1min", "--keep", "3")
    assert r.returncode == 0, r.stderr
    new = home / f"shelfcast-support-n1-{SECOND}-2.tar.gz"
    assert not target.exists(), "the link at the default name was followed"
    assert _members(new)[0].startswith(f"shelfcast-support-{SECOND}-2/")
    # newest first: SECOND-2, then earlier-10, -9, -2, the first of that second: 3 stay
    assert new.exists() and old[10].exists() and old[9].exists(), sorted(home.iterdir())
    assert not old[2].exists() and not old[1].exists(), sorted(home.iterdir())
    assert "removed 2 older support bundle(s) of n1" in r.stdout, r.stdout
    assert (home / f"shelfcast-support-n1-{SECOND}.tar.gz").is_symlink()  # not ours: left alone


def test_an_explicit_out_is_written_over_as_before(node_dir: Path, run_cli: Any) -> None:
    cfg = node_dir / "node.yaml"
    out = node_dir / "ticket-4711.tar.gz"
    out.write_text("an older file the user names again\n")
    r = run_cli("support-bundle", "--config", str(cfg), "--since=-1min", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert _members(out)[0].startswith(f"shelfcast-support-{SECOND}/")  # the user's name, a bundle in it
    assert sorted(p.name for p in out.parent.glob("*.tar.gz")) == [out.name]
