"""Markdown tables for docs/model-card.md from ``metrics.json`` (so the card is regenerated, not typed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLS = ("precision", "recall", "f1", "map", "ndcg", "hit_rate", "repeat_recall", "explore_recall", "diversity",
        "coverage")
TASKS = {"P1": "P1 next basket", "P2": "P2 in-store (3 revealed)", "P3a": "P3a cold shopper, context only",
         "P3b": "P3b cold shopper + 3 revealed"}


def tables(res: dict[str, Any]) -> str:
    out: list[str] = []
    table = res["table"]
    for task, title in TASKS.items():
        n = res.get("sizes", {}).get(task)
        out.append(f"#### {title} (n = {n})\n")
        out.append("| method | " + " | ".join(f"{c}@10" if c not in ("diversity", "coverage") else c
                                           for c in COLS) + " |")
        out.append("|---" * (len(COLS) + 1) + "|")
        for m, tasks in table.items():
            row = tasks.get(task, {})
            out.append(f"| {m} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in COLS) + " |")
        out.append("")
    out.append("#### P4 new items (products never sold in training)\n")
    out.append("| method | task | share of list slots with a new item | new-item hits | new-item targets | "
               "new-item recall |")
    out.append("|---|---|---|---|---|---|")
    for m, tasks in table.items():
        for task in TASKS:
            p4 = tasks.get(task, {}).get("p4")
            if p4 and (m.startswith("model") or task == "P1"):
                out.append(f"| {m} | {task} | {p4['new_item_slots_share']:.4f} | {p4['new_item_hits']} | "
                           f"{p4['new_item_targets']} | {p4['new_item_recall']:.4f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(tables(json.loads(Path(sys.argv[1]).read_text())))
