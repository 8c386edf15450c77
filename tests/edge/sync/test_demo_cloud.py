"""``shelfcast demo --cloud-broker``: the summary's ``events`` is exactly what the cloud ingest received."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def test_demo_events_equal_what_the_ingest_received(mosquitto: Any, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    ing = subprocess.Popen([sys.executable, "-m", "edge", "cloud", "ingest", "--broker", mosquitto.url, "--out",
                            str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert ing.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "subscribed" not in ing.stderr.readline():
        pass
    demo = subprocess.run([sys.executable, "-m", "edge", "demo", "--duration", "10", "--quiet", "--cloud-broker",
                           mosquitto.url], capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    time.sleep(1.0)  # the ingest writes Parquet every 0.5 s
    ing.send_signal(signal.SIGTERM)
    stdout, _ = ing.communicate(timeout=30)
    got = json.loads(stdout.strip().splitlines()[-1])
    assert summary["events"] > 0 and summary["outbox_pending"] == 0
    assert got["unique"] == summary["events"], (summary, got)
    assert got["written"] == got["unique"] and got["bad"] == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)  # every file has the same schema: the directory reads as one dataset
    assert table.num_rows == got["written"] and len(set(table.column("id").to_pylist())) == table.num_rows
    assert {"shopper", "impression"} <= set(table.column("type").to_pylist())
