"""Installs from one checkout never share a build directory: ``deploy/install.sh`` has pip build a private copy of
the checkout and writes nothing into it.

Before, pip built in the checkout itself (setuptools' ``build/`` and ``shelfcast.egg-info``), so two installers run
from one checkout at once (two scratch roots, an image builder beside a technician, parallel tests) wrote and
removed the same files; seen once as a flaky deploy test. The copy is what git tracks plus new files it does not
ignore (a git checkout), or the tree without build output, caches and venvs (no git).

Real installer runs into ``--destdir`` scratch roots (the ``deploy`` fixture), real pip, real git.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SITE = f"lib/python3.{sys.version_info.minor}/site-packages"


def tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def package(root: Path) -> set[str]:
    """The ShelfCast files the venv the node runs holds (no bytecode)."""
    edge = root / "opt/shelfcast/venv" / SITE / "edge"
    return {str(p.relative_to(edge)) for p in edge.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_two_installs_from_one_checkout_at_once_both_get_all_of_it(tmp_path: Path, deploy: Any) -> None:
    src = deploy.newer_source(tmp_path / "src")  # not a git checkout
    before = tree(src)
    cmds = [["bash", str(deploy.INSTALL), "--destdir", str(tmp_path / f"root{i}"), *deploy.FAST, "--no-kiosk",
             "--source", str(src)] for i in (1, 2)]
    tmp = tmp_path / "tmp"  # where the installers make their private build directories
    tmp.mkdir()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "TMPDIR": str(tmp)}) for c in cmds]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert tree(src) == before, f"the installer wrote into the checkout: {sorted(tree(src) - before)[:10]}"
    first, second = (package(tmp_path / f"root{i}") for i in (1, 2))
    assert first == second and "_upgrade_probe.py" in first and "app.py" in first
    shipped = {str(p.relative_to(src / "edge")) for p in (src / "edge").rglob("*") if p.is_file()}
    assert first == shipped, sorted(first ^ shipped)[:10]  # all of the package, nothing else
    assert not list(tmp.iterdir()), sorted(tmp.iterdir())  # the private build directories are gone


def test_a_git_checkout_builds_what_git_tracks_and_new_files_not_what_it_ignores(tmp_path: Path,
                                                                                 deploy: Any) -> None:
    src = deploy.newer_source(tmp_path / "src")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    subprocess.run([*git, "add", "-A"], check=True, timeout=60)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True, timeout=60)
    (src / "edge/_untracked_probe.py").write_text('"""a new module, not committed yet"""\n')
    with open(src / ".gitignore", "a") as f:
        f.write("edge/data/local-*\n")
    (src / "edge/data/local-scratch.bin").write_bytes(b"a developer's local file git ignores")
    before = tree(src)
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk", "--source", str(src))
    assert p.returncode == 0, p.stdout + p.stderr
    assert tree(src) == before, f"the installer wrote into the checkout: {sorted(tree(src) - before)[:10]}"
    got = package(root)
    assert {"_upgrade_probe.py", "_untracked_probe.py", "app.py"} <= got
    assert "data/local-scratch.bin" not in got  # ignored by git: a local file, not part of ShelfCast
