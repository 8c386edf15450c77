"""``shelfcast bench soak``: a short real run (node process, pty shelves, Mosquitto outage, SSE churn, check-ins,
releases) prints every sampled metric with its growth per hour, and the node exits cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.soak import METRICS, fit_per_hour

ROOT = Path(__file__).resolve().parents[2]


def test_fit_per_hour_uses_the_second_half_only() -> None:
    # a steep warm-up, then flat: the fit sees only the flat half
    pts = [(0.0, 100.0), (30.0, 150.0), (60.0, 180.0), (90.0, 200.0), (120.0, 200.0), (150.0, 200.0),
           (180.0, 200.0), (210.0, 200.0)]
    assert fit_per_hour(pts) == pytest.approx(0.0)
    # one unit per 30 s in the second half: 120 per hour
    pts = [(t * 30.0, 5.0 + max(0, t - 3)) for t in range(8)]
    assert fit_per_hour(pts) == pytest.approx(120.0)
    assert fit_per_hour([(0.0, 1.0)]) is None


def test_bench_soak_short_run_reports_every_metric_and_the_node_exits_cleanly(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is needed: sudo apt-get install -y mosquitto")
    r = subprocess.run([sys.executable, "-m", "edge", "bench", "soak", "--minutes", "0.3", "--json", "--keep",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["node_exited_cleanly"] is True and out["node_exit"] == 0
    assert out["samples"] >= 5
    for m in METRICS:
        assert set(out["metrics"][m]) >= {"start", "end", "per_hour"}, m
    for m in ("rss_mb", "fds", "threads", "asyncio_tasks", "db_mb", "outbox_rows", "data_dir_mb", "log_bytes"):
        assert out["metrics"][m]["start"] is not None, m  # asyncio_tasks: the node's /api/health "process" gauge
        assert out["metrics"][m]["per_hour"] is not None, m
    assert out["metrics"]["rss_mb"]["start"] > 20
    assert out["metrics"]["asyncio_tasks"]["start"] >= 1
    load = out["load"]
    assert load["shelf_actions"] > 0 and load["picks_per_s"] >= 2
    assert load["sse_connects"] > 0 and load["sse_frames"] > 0 and load["silent_connects"] >= 1
    assert load["checkins"] > 0 and load["checkin_errors"] == 0
    assert load["outages"] == 1
    assert load["releases"] and all("error" not in rel for rel in load["releases"]), load["releases"]
    assert all("rss_step_mb" in rel and rel["at_s"] < 0.3 * 60 / 2 for rel in load["releases"])  # first half
    assert out["errors"] == [], out["errors"]
    assert (tmp_path / "run" / "node.log").stat().st_size > 0


def test_bench_soak_refuses_bad_minutes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "bench", "soak", "--minutes", "0"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0
    assert "--minutes must be above 0" in r.stderr and "Traceback" not in r.stderr
