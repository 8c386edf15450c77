"""An upgrade never puts the node on a half-installed venv: ``deploy/install.sh`` builds the new ShelfCast in a venv
beside the one the node runs (``/opt/shelfcast/venvs/<version>-<time>``) and switches the ``/opt/shelfcast/venv``
symlink to it by one rename while the node is stopped for its restart. Until then a restart (crash, watchdog, power
cut) starts the old venv, whole; a pip that fails leaves it serving. The previous venv is kept for a rollback, older
ones are removed.

Real installer runs in a ``--destdir`` scratch root with real pip (the fast options of tests/deploy/test_install.py).
"What the node runs" is the tree ``opt/shelfcast/venv`` resolves to; it is snapshotted (inode, size, mtime, content)
before an upgrade and must be the same file for file after it: before this change pip rewrote it in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from edge.store import SCHEMA_VERSION

SITE = f"lib/python3.{sys.version_info.minor}/site-packages"
# the installer of the session start: its layout (a real directory at /opt/shelfcast/venv) is what stores have
LAYOUT_BEFORE = "96e0b90"


def served(root: Path) -> Path:
    """The venv directory the node runs: what /opt/shelfcast/venv resolves to (inside the scratch root)."""
    link = root / "opt/shelfcast/venv"
    return link.resolve() if link.is_symlink() else link


def snapshot(tree: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for p in sorted(tree.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(tree))] = (0, 0, 0, os.readlink(p))
        elif p.is_file():
            st = p.stat()
            out[str(p.relative_to(tree))] = (st.st_ino, st.st_size, st.st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def actions(root: Path) -> list[str]:
    """The system actions the last run recorded (none: no log)."""
    log = root / "opt/shelfcast/install-actions.log"
    return log.read_text().splitlines() if log.exists() else []


def version_from(root: Path) -> str:
    """`shelfcast version` as shelfcast.service starts it: ExecStart's /opt/shelfcast/venv/bin/shelfcast (run by
    the venv's python through the link, since its #! line names the path the card will have)."""
    venv = root / "opt/shelfcast/venv"
    r = subprocess.run([str(venv / "bin/python"), str(venv / "bin/shelfcast"), "version"], capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    return str(json.loads(r.stdout)["shelfcast"])


def test_an_upgrade_builds_beside_the_served_venv_and_switches_the_link(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    link = root / "opt/shelfcast/venv"
    assert link.is_symlink(), "the venv is not a link to switch: pip would replace it in place under the node"
    first = served(root)
    assert first.parent == root / "opt/shelfcast/venvs" and os.readlink(link) == f"venvs/{first.name}"
    before = snapshot(first)
    assert f"{SITE}/edge/doctor.py" in before

    new = deploy.newer_source(tmp_path / "new")
    p = deploy.install(root, "--no-kiosk", "--source", str(new))
    assert p.returncode == 0, p.stdout + p.stderr
    second = served(root)
    assert second != first and second.parent == first.parent
    assert (second / SITE / "edge/_upgrade_probe.py").exists()
    assert not (first / SITE / "edge/_upgrade_probe.py").exists()
    # the venv the node ran is the same, file for file (same inodes: the hard links the new one was seeded with
    # were never written through), and kept as the previous one for a rollback
    assert snapshot(first) == before
    assert f"previous: venvs/{first.name}" in p.stdout, p.stdout
    # the node is stopped, the link switched, the node started: never restarted on a venv that changes under it
    acts = actions(root)
    assert "systemctl restart shelfcast.service" not in acts, acts
    assert acts.index("systemctl stop shelfcast.service") < acts.index("systemctl start shelfcast.service"), acts
    # the new venv names the path the node runs it by, not where it was built
    assert (second / "bin/shelfcast").read_text().splitlines()[0] == "#!/opt/shelfcast/venv/bin/python"
    assert 'VIRTUAL_ENV="/opt/shelfcast/venv"' in (second / "bin/activate").read_text()
    pyc = next((second / SITE / "edge/__pycache__").glob("_upgrade_probe.*.pyc"))
    assert b"/opt/shelfcast/venv/lib/" in pyc.read_bytes() and str(root).encode() not in pyc.read_bytes()
    from edge import __version__

    assert version_from(root) == __version__

    # a third ShelfCast: the one before the previous is removed, two stay
    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.newer_source(tmp_path / "newer", "_upgrade_probe2")))
    assert p.returncode == 0, p.stdout + p.stderr
    third = served(root)
    assert sorted(d.name for d in third.parent.iterdir()) == sorted([second.name, third.name])
    assert f"removed the older venv /opt/shelfcast/venvs/{first.name}" in p.stdout, p.stdout
    assert (third / SITE / "edge/_upgrade_probe2.py").exists()


def test_a_failed_pip_leaves_the_served_venv_and_says_what_failed(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    first = served(root)
    before = snapshot(first)
    broken = deploy.newer_source(tmp_path / "broken")
    # a newer ShelfCast that needs a package this node cannot get (offline, no wheel for it): pip stops
    pyproject = broken / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("dependencies = [\n",
                                                       'dependencies = [\n    "shelfcast-test-unavailable>=1",\n', 1))
    # with its dependencies this time (the others are there, through --inherit-site), from no index
    p = deploy.install(root, "--no-kiosk", "--source", str(broken), "--pip-options", "--no-build-isolation --no-index")
    assert p.returncode == 1, p.stdout + p.stderr
    assert served(root) == first and snapshot(first) == before
    assert f"pip could not install {broken}" in p.stderr, p.stderr
    assert "nothing was replaced" in p.stderr and "keeps running the installed ShelfCast" in p.stderr, p.stderr
    assert "shelfcast-test-unavailable" in p.stderr and "Traceback" not in p.stderr, p.stderr  # pip's words
    # the half-built venv is gone, not left on the card
    assert [d.name for d in (root / "opt/shelfcast/venvs").iterdir()] == [first.name]
    assert not [a for a in actions(root) if "shelfcast.service" in a and a.split()[1] in ("stop", "start", "restart")]


def test_a_config_the_new_code_refuses_after_pip_leaves_the_served_venv(tmp_path: Path, deploy: Any) -> None:
    """The config is checked after pip when the new ShelfCast cannot be imported from its source (it needs a package
    the installed one lacks): that check now happens before the switch, so a refusal replaces nothing."""
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    first = served(root)
    before = snapshot(first)
    new = deploy.newer_source(tmp_path / "new")
    # importable only once installed: the new code imports a module its wheel adds at build time (a stand-in for
    # a new dependency), so the installer's pre-pip check cannot run it and checks after pip
    (new / "edge" / "deployment.py").write_text("import edge._built_only  # noqa: F401\n"
                                                + (new / "edge" / "deployment.py").read_text())
    (new / "setup.py").write_text(
        "from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n"
        "class Build(build_py):\n    def run(self):\n        super().run()\n"
        "        import os\n        open(os.path.join(self.build_lib, 'edge', '_built_only.py'), 'w').close()\n\n\n"
        "setup(cmdclass={'build_py': Build})\n")
    cfg = root / "etc/shelfcast/shelfcast.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw.setdefault("signage", {})["admin_token"] = "short-token"  # the new code's rule: >= 16 characters
    cfg.write_text(yaml.safe_dump(raw))

    p = deploy.install(root, "--no-kiosk", "--source", str(new))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "cannot be imported before it is installed" in p.stdout, p.stdout  # the check after pip ran
    assert served(root) == first and snapshot(first) == before, "pip replaced the venv the node runs"
    assert "signage.admin_token" in p.stderr and "nothing was replaced" in p.stderr, p.stderr
    assert [d.name for d in (root / "opt/shelfcast/venvs").iterdir()] == [first.name]


def test_an_upgrade_from_the_layout_before_moves_the_old_venv_aside(tmp_path: Path, deploy: Any) -> None:
    """A node installed by the installer stores run today (a real directory at /opt/shelfcast/venv) upgrades to
    the link layout; its venv becomes the previous one, unchanged; units, `shelfcast` on PATH and uninstall work."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(deploy.REPO), "archive", LAYOUT_BEFORE, "deploy", "pyproject.toml"],
                             capture_output=True, timeout=60)
    assert archive.returncode == 0, (f"this test needs commit {LAYOUT_BEFORE} (the installer stores have): "
                                     f"git fetch --unshallow; {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=60)
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.REPO), installer=old / "deploy/install.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    venv = root / "opt/shelfcast/venv"
    assert venv.is_dir() and not venv.is_symlink()  # the layout before
    before = snapshot(venv)
    (root / "var/lib/shelfcast/shelfcast.db").write_bytes(b"the store's data")

    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.newer_source(tmp_path / "new")))
    assert p.returncode == 0, p.stdout + p.stderr
    assert venv.is_symlink() and (served(root) / SITE / "edge/_upgrade_probe.py").exists()
    (moved,) = [d for d in (root / "opt/shelfcast/venvs").iterdir() if d != served(root)]
    from edge import __version__

    assert moved.name.startswith(f"{__version__}-"), moved.name  # named for the version it holds
    assert snapshot(moved) == before  # the old venv, moved whole: the previous one for a rollback
    # what shelfcast.service and a technician run, by the paths they use
    unit = (root / "etc/systemd/system/shelfcast.service").read_text()
    assert "ExecStart=/opt/shelfcast/venv/bin/shelfcast run" in unit
    for name in ("opt/shelfcast/bin/shelfcast", "usr/local/bin/shelfcast"):
        assert os.readlink(root / name) == "/opt/shelfcast/venv/bin/shelfcast"
        assert (root / os.readlink(root / name).lstrip("/")).exists()
    from edge import __version__

    assert version_from(root) == __version__
    hits = subprocess.run(["grep", "-rlF", "--", str(root), str(root / "opt/shelfcast")], capture_output=True,
                          text=True, timeout=60)
    assert hits.returncode == 1 and hits.stdout == "", hits.stdout  # nothing names the scratch root
    if os.geteuid() == 0 and shutil.which("unshare"):
        # the card as the node sees it: DIR/opt at /opt, DIR itself hidden
        script = (f'mount --bind "{root}/opt" /opt && mount -t tmpfs none "{root}" && '
                  "/opt/shelfcast/venv/bin/shelfcast version && /opt/shelfcast/bin/shelfcast version")
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, timeout=120, cwd="/")
        assert r.returncode == 0, r.stdout + r.stderr
        assert [json.loads(v)["shelfcast"] for v in r.stdout.splitlines()] == [__version__] * 2, r.stdout

    # uninstall removes the program, both venvs and the link; the data and config stay
    p = subprocess.run(["bash", str(deploy.UNINSTALL), "--destdir", str(root)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not (root / "opt/shelfcast").exists() and not (root / "usr/local/bin/shelfcast").is_symlink()
    assert (root / "var/lib/shelfcast/shelfcast.db").read_bytes() == b"the store's data"
    assert (root / "etc/shelfcast/shelfcast.yaml").exists()


def test_a_rerun_without_a_new_shelfcast_keeps_the_venv(tmp_path: Path, deploy: Any) -> None:
    """The installer's own copy re-run (a config change): no new venv, the node restarted once, nothing pruned."""
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    first = served(root)
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert served(root) == first and [d.name for d in first.parent.iterdir()] == [first.name]
    assert actions(root).count("systemctl restart shelfcast.service") == 1


def rollback(root: Path) -> subprocess.CompletedProcess[str]:
    """What the guide has a technician type: the installer's own copy, --rollback."""
    return subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root), "--rollback"],
                          capture_output=True, text=True, timeout=300)


def test_rollback_switches_back_to_the_previous_venv_and_forward_again(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    p = rollback(root)  # a first install has nothing to go back to
    assert p.returncode == 1 and "no previous venv to go back to" in p.stderr and "section 8" in p.stderr, p.stderr
    first = served(root)
    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.newer_source(tmp_path / "new")))
    assert p.returncode == 0, p.stdout + p.stderr
    second = served(root)
    assert (root / "opt/shelfcast/venv.previous").resolve() == first

    # the newer version migrated the database: going back is refused before anything changes, with the way back
    db = root / "var/lib/shelfcast/shelfcast.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(db)) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    p = rollback(root)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"sudo cp -p /var/lib/shelfcast/shelfcast.db.v{SCHEMA_VERSION}.bak" in p.stderr, p.stderr
    assert "nothing was changed" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert served(root) == second and "systemctl stop shelfcast.service" not in actions(root)
    with closing(sqlite3.connect(db)) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # the technician restored the backup

    p = rollback(root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert served(root) == first and not (root / "opt/shelfcast/venv" / SITE / "edge/_upgrade_probe.py").exists()
    assert (root / "opt/shelfcast/venv.previous").resolve() == second
    acts = actions(root)
    assert acts.index("systemctl stop shelfcast.service") < acts.index("systemctl start shelfcast.service"), acts
    assert "systemctl restart shelfcast.service" not in acts, acts
    from edge import __version__

    assert version_from(root) == __version__
    p = rollback(root)  # and forward again
    assert p.returncode == 0, p.stdout + p.stderr
    assert served(root) == second and (root / "opt/shelfcast/venv" / SITE / "edge/_upgrade_probe.py").exists()
    # the next upgrade keeps the one it replaces and the venv it is built from, removes the other
    p = deploy.install(root, "--no-kiosk", "--source", str(deploy.newer_source(tmp_path / "newer", "_upgrade_probe2")))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(d.name for d in served(root).parent.iterdir()) == sorted([second.name, served(root).name])
