"""Numbers that must be above 0 are refused by the parser with the flag's name (found by the contract audit:
`calibrate camera --max-error-cm -1` and `bench serial --shelf-hours -1` ran and reported nonsense)."""

from __future__ import annotations

import pytest

from edge.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["calibrate", "camera", "--max-error-cm", "-1"], "--max-error-cm"),
    (["bench", "serial", "--shelf-hours", "-1"], "--shelf-hours"),
    (["bench", "serial", "--pty-seconds", "0"], "--pty-seconds"),
    (["bench", "serial", "--shelf-hours", "nan"], "--shelf-hours"),
])
def test_a_number_that_must_be_positive_is_refused_naming_the_flag(
        argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "above 0" in err, err
