"""`shelfcast model keygen` tells store ops how the public key reaches a node: the technician's
`provision --model-key`, the command the guide and doctor name (it used to say "set model.public_key to its
path", a hand edit of the root-owned config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main


def test_keygen_hint_names_provision_model_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "keygen", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["public_key"]).is_file() and Path(out["private_key"]).is_file()
    assert "shelfcast provision --model-key release-signing.pub" in out["hint"], out["hint"]
    assert "offline" in out["hint"]


def test_keygen_keeps_an_existing_key_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Old code: a second keygen in the same directory silently replaced the signing key every node trusts."""
    assert main(["model", "keygen", "--out", str(tmp_path)]) == 0
    first = json.loads(capsys.readouterr().out)
    key = Path(first["private_key"]).read_bytes()
    assert main(["model", "keygen", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "release-signing.key exists: keeping it" in err and "--force" in err and "--name" in err, err
    assert Path(first["private_key"]).read_bytes() == key
    assert main(["model", "keygen", "--out", str(tmp_path), "--name", "second"]) == 0  # another name is fine
    capsys.readouterr()
    assert main(["model", "keygen", "--out", str(tmp_path), "--force"]) == 0
    assert Path(first["private_key"]).read_bytes() != key
