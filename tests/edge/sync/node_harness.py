"""A real node (``edge.app.Node`` with its sync room) in its own process, for ``kill -9`` tests.

Usage: python node_harness.py CONFIG.json [--events N --rate R --accepted FILE] [--status FILE] [--fake-model]

- ``--events``: append N ShopperEvents at R/s straight into the store's outbox and write each id to
  ``--accepted`` once the store has committed it (that is what "accepted" means).
- ``--status``: rewrite a JSON file every 50 ms with the serving model's version and whether it answers.
- ``--fake-model``: serve ``fakes.FakeScorer("v1")`` and load releases with ``fakes.load``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--events", type=int, default=0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--accepted", type=Path, default=None)
    ap.add_argument("--status", type=Path, default=None)
    ap.add_argument("--fake-model", action="store_true")
    args = ap.parse_args()

    import edge.app
    import edge.sync.room
    from edge.config import NodeConfig
    from edge.events import ShopperEvent
    from edge.recommend import VisitState

    if args.fake_model:
        spec = importlib.util.spec_from_file_location("sync_test_fakes", HERE / "fakes.py")
        assert spec is not None and spec.loader is not None
        fakes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fakes)
        edge.app.load_model_scorer = lambda config, *a, **k: fakes.FakeScorer("v1")  # type: ignore[assignment]
        edge.sync.room.default_loader = lambda config, store=None: fakes.load  # type: ignore[assignment]

    config = NodeConfig.model_validate(json.loads(args.config.read_text()))

    async def run() -> None:
        node = edge.app.Node(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await node.start()
        assert node.sync is not None and node.sync.canary is not None
        if args.fake_model:
            node.sync.canary.set_requests(fakes.canary_requests())
        acc = open(args.accepted, "a", buffering=1) if args.accepted else None  # noqa: SIM115
        pending: list[tuple[str, Any]] = []
        sent = 0
        t0 = time.monotonic()
        visit = VisitState("probe", zone="dairy", picked=["sku-1"])
        from datetime import UTC, datetime

        while not stop.is_set():
            now = time.monotonic() - t0
            due = min(args.events, int(now * args.rate)) - sent
            for _ in range(max(0, due)):
                ev = ShopperEvent(session=f"s{sent % 20}", sku=f"sku-{sent % 100}", action="pick", zone="dairy")
                pending.append((ev.id, node.store.append_event(ev, upstream=node.sync.topics.events)))
                sent += 1
            keep = []
            for eid, f in pending:
                if f.done():
                    if f.exception() is None and acc is not None:
                        acc.write(eid + "\n")
                else:
                    keep.append((eid, f))
            pending = keep
            if args.status is not None:
                model = node.recommender.model if node.recommender is not None else None
                ok = False
                try:
                    ok = bool(model.score(visit, datetime.now(UTC), 5, set())) if model is not None else False
                except Exception:
                    ok = False
                tmp = args.status.with_suffix(".tmp")
                tmp.write_text(json.dumps({"model": getattr(model, "version", None), "answers": ok,
                                           "sent": sent, "pending": node.store.outbox_pending(),
                                           "connected": node.sync.link.connected.is_set(), "pid": os.getpid()}))
                tmp.replace(args.status)
            await asyncio.sleep(0.02)
        await node.stop()

    asyncio.run(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
