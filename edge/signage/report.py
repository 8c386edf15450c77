"""``shelfcast report``: how often what a screen showed was picked up.

Reads the node's SQLite cache read-only (safe next to a running node: WAL).
Per screen and per model version: impressions (distinct sets shown),
impressions shown to a session (the only ones that can convert), sessions
reached, conversions (a shown item picked up by that session within the
window) and the conversion rate = conversions / impressions shown to a session.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["conversion_report", "format_report"]


def _rate(conv: int, imps: int) -> float | None:
    return round(conv / imps, 4) if imps else None


def _counters(table: dict[str, dict[str, Any]], key: str | None) -> dict[str, Any]:
    """The counters of ``key`` (a screen or a model version; "?" when missing) in ``table``, created at 0."""
    return table.setdefault(key or "?", {"impressions": 0, "personal_impressions": 0, "sessions": 0, "conversions": 0})


def conversion_report(db: Path, since: float | None = None) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        t0 = since or 0.0
        screens: dict[str, dict[str, Any]] = {}
        models: dict[str, dict[str, Any]] = {}
        for screen, mv, n, personal, sessions in conn.execute(
            "SELECT screen, model_version, count(*), sum(session IS NOT NULL), count(DISTINCT session) "
            "FROM impressions WHERE t >= ? GROUP BY screen, model_version", (t0,)
        ):
            for row in (_counters(screens, screen), _counters(models, mv)):
                row["impressions"] += n
                row["personal_impressions"] += personal or 0
                row["sessions"] += sessions
        for screen, mv, n in conn.execute(
            "SELECT json_extract(payload, '$.screen'), json_extract(payload, '$.model_version'), count(*) "
            "FROM events WHERE type = 'conversion' AND t >= ? GROUP BY 1, 2", (t0,)
        ):
            for row in (_counters(screens, screen), _counters(models, mv)):
                row["conversions"] += n
    finally:
        conn.close()

    def rows(table: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
        return [{name: k, **v, "conversion_rate": _rate(v["conversions"], v["personal_impressions"])}
                for k, v in sorted(table.items())]

    total_conv = sum(v["conversions"] for v in screens.values())
    total_pers = sum(v["personal_impressions"] for v in screens.values())
    return {
        "since": since,
        "generated": time.time(),
        "screens": rows(screens, "screen"),
        "models": rows(models, "model_version"),
        "total": {"impressions": sum(v["impressions"] for v in screens.values()),
                  "personal_impressions": total_pers, "conversions": total_conv,
                  "conversion_rate": _rate(total_conv, total_pers)},
    }


def format_report(r: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x * 100:.1f} %"

    out = []
    for title, key in (("screen", "screens"), ("model version", "models")):
        name = "screen" if key == "screens" else "model_version"
        out.append(f"{'by ' + title:<28} {'impressions':>11} {'to sessions':>11} {'conversions':>11} {'rate':>8}")
        for row in r[key]:
            out.append(f"{str(row[name])[:28]:<28} {row['impressions']:>11} {row['personal_impressions']:>11} "
                       f"{row['conversions']:>11} {pct(row['conversion_rate']):>8}")
        if not r[key]:
            out.append("  (nothing shown yet)")
        out.append("")
    t = r["total"]
    out.append(f"{'total':<28} {t['impressions']:>11} {t['personal_impressions']:>11} {t['conversions']:>11} "
               f"{pct(t['conversion_rate']):>8}")
    return "\n".join(out)
