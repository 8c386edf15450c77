"""What the installer tests share: where deploy/install.sh and uninstall.sh are, the options that make an
install fast (this venv's packages, no pip download), running the installer into a scratch root, and a "newer"
ShelfCast to upgrade to. Tests get them through the ``deploy`` fixture (tests cannot import each other or a
conftest under --import-mode=importlib): ``deploy.install(root, "--no-kiosk")``, ``deploy.REPO`` ..."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class Deploy:
    REPO = REPO
    INSTALL = REPO / "deploy" / "install.sh"
    UNINSTALL = REPO / "deploy" / "uninstall.sh"
    # a venv on this Python that sees this venv's packages and installs ShelfCast without downloading anything
    FAST = ("--python", sys.executable, "--venv-options", "--without-pip",
            "--inherit-site", sysconfig.get_paths()["purelib"],
            "--pip-options", "--no-deps --no-build-isolation --no-index")

    @staticmethod
    def install(root: Path, *extra: str, installer: Path = INSTALL,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``bash installer --destdir root FAST... extra...`` (``extra`` after ``FAST``: a later option wins)."""
        return subprocess.run(["bash", str(installer), "--destdir", str(root), *Deploy.FAST, *extra],
                              capture_output=True, text=True, timeout=300, cwd=cwd)

    @staticmethod
    def newer_source(dest: Path, marker: str = "_upgrade_probe") -> Path:
        """This checkout's tracked files (as they are in the working tree) plus a module only the 'new' one has,
        ``edge/<marker>.py``."""
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
        for name in files.decode().split("\0"):
            src = REPO / name
            if name and src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        (dest / "edge" / f"{marker}.py").write_text('"""only in a newer ShelfCast of tests/deploy"""\n')
        return dest


@pytest.fixture(scope="session")
def deploy() -> type[Deploy]:
    """``deploy.install(root, *extra)``, ``deploy.newer_source(dest)``, ``deploy.REPO/INSTALL/UNINSTALL/FAST``."""
    return Deploy
