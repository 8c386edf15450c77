"""A value that starts with '-' after an option: `support-bundle --since -1d` (its help gives the default as
-2d), `calibrate camera --point -5,3:1,1`. argparse reads it as another option and said only "expected one
argument"; the error now says to join it with '='. The '=' form works."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge.cli import main


def test_dash_value_error_names_the_equals_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["support-bundle", "--since", "-1d"]) == 2
    err = capsys.readouterr().err
    assert "expected one argument" in err and "--since=-VALUE" in err, err  # old code: no hint


def test_the_equals_form_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"node": {"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "d")},
                                   "signage": {"enabled": False}}))
    out = tmp_path / "b.tar.gz"
    assert main(["support-bundle", "--config", str(cfg), "--out", str(out), "--since=-1min"]) == 0
    assert out.stat().st_size > 0
