"""`shelfcast demo` whose data dir fills up while it runs: one error line with the fix and exit 1, no traceback
(it ended in a StoreError traceback at its final flush)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_on_a_disk_that_fills_up_ends_with_one_line_and_the_fix(
        tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    data = tiny_disk / "d"
    p = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--data-dir", str(data), "--duration", "14",
                          "--quiet", "--seed", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (data / "shelfcast.db").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # the node runs and records events, then the disk fills under it
        fill_disk(tiny_disk)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert "Traceback" not in err, err
    assert p.returncode == 1, (p.returncode, err[-2000:])
    last = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(last) == 1 and "full" in last[0] and "--data-dir" in last[0], err[-2000:]
    assert '"store_error"' in out and '"status":"degraded"' in out, out
