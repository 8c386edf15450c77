"""After an upgrade a technician runs `shelfcast doctor`: its model line checked the bundled model and printed
its version only, so a node serving an installed release (kept across the upgrade) looked as if the release
was lost (seen in the c31f3ee -> main upgrade: doctor said 2026.11.30-v5, the node served 2026.12.01-v6)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.config import load_config
from edge.doctor import check_model


def test_doctor_model_line_names_the_installed_release_the_node_serves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg_file = tmp_path / "n.yaml"
    cfg_file.write_text(f"node:\n  data_dir: {data}\n")
    cfg = load_config(cfg_file)
    before = check_model(cfg, bench_n=1)
    assert before.status in ("pass", "warn"), before
    assert "installed release" not in before.detail, before.detail  # no release installed: nothing to add
    (data / "models").mkdir(parents=True)
    (data / "models" / "active.json").write_text(json.dumps(
        {"version": "2026.12.01-v6", "path": str(data / "models" / "2026.12.01-v6"), "sha256": "0" * 64}))
    after = check_model(cfg, bench_n=1)
    assert after.status == before.status
    assert "the node serves installed release 2026.12.01-v6" in after.detail, after.detail
    (data / "models" / "active.json").write_text("{not json")  # a torn pointer: the line stays as it was
    assert "installed release" not in check_model(cfg, bench_n=1).detail
