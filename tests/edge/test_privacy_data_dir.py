"""Privacy: the node's SQLite cache holds hashed shopper keys, profiles (demographics, purchase history) and visit
histories. The systemd unit runs the node with UMask=0027 in a 0750 directory; a `shelfcast run` started any other
way (by hand, under sudo, from a container's entrypoint) must not leave them readable by every user of the machine
either: the data dir and what the node writes there get no permissions for others, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest


def run_node(tmp_path: Path, procs: Any, data: Path, umask: int = 0o022) -> str:
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"node:\n  data_dir: {data}\nshelves:\n  enabled: false\nsignage:\n  port: 0\n")
    old = os.umask(umask)  # the child inherits it, as from a login shell or sudo
    try:
        p = procs.start(cfg)
    finally:
        os.umask(old)
    return procs.wait_running(p) + procs.stop(p)


def others(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode) & 0o007


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_a_new_data_dir_and_the_database_are_not_world_readable(tmp_path: Path, node_process: Any,
                                                                umask: int) -> None:
    data = tmp_path / "data"
    out = run_node(tmp_path, node_process, data, umask)
    files = [f for f in data.rglob("*")]
    assert (data / "shelfcast.db").exists(), out
    assert others(data) == 0, oct(data.stat().st_mode)  # old code: 0o755 under umask 022
    readable = [f"{f.relative_to(data)} {oct(stat.S_IMODE(f.stat().st_mode))}" for f in files if others(f)]
    assert readable == [], readable  # old code: shelfcast.db 0o644, models/, sync/ 0o755


def test_an_existing_open_data_dir_is_closed_to_others(tmp_path: Path, node_process: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "shelfcast.db").touch()
    (data / "shelfcast.db").chmod(0o644)
    run_node(tmp_path, node_process, data)
    assert others(data) == 0, oct(data.stat().st_mode)
    assert others(data / "shelfcast.db") == 0, oct((data / "shelfcast.db").stat().st_mode)
