"""The installer never overwrites a config: a template that differs lands beside it as ``shelfcast.yaml.dist``.
Before, that file stayed for good, also once the config matched the template again (a restored default, an
upgrade whose template caught up), and told the technician about a difference there no longer was."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any


def rerun(root: Path) -> None:
    """The installer's own copy run again (no new ShelfCast): what a technician does after a config change."""
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root), "--no-kiosk"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_dist_template_goes_once_the_config_matches_it(tmp_path: Path, deploy: Any) -> None:
    root = tmp_path / "root"
    p = deploy.install(root, "--no-kiosk")
    assert p.returncode == 0, p.stdout + p.stderr
    cfg = root / "etc/shelfcast/shelfcast.yaml"
    dist = cfg.with_name("shelfcast.yaml.dist")
    template = cfg.read_text()
    cfg.write_text(template.replace("node_id: node-1", "node_id: node-7"))
    rerun(root)
    assert dist.read_text() == template and "node-7" in cfg.read_text()
    shutil.copy2(dist, cfg)  # the technician goes back to the default
    rerun(root)
    assert not dist.exists(), "a template equal to the config is still beside it"
    assert cfg.read_text() == template
