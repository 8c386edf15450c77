"""What model releases leave in RAM, in one process: ``python -m edge.sync.release_bench --releases N [--json]``.

The node's release path without the network: a ``ReleaseManager`` with the real loader (``edge.ranking``) and the
real canary (cold requests from the bundled catalogue) serves the shipped model, takes N signed releases of it
(copies of ``models/shipped`` under new versions, built and signed as ``shelfcast model publish`` does, handed
over chunk by chunk as the link thread does) and serves requests between them. After each release it prints the
process's RSS and anonymous memory (``/proc/self/smaps_rollup``), the ``Ranker`` objects still alive (weak
references: serving + previous at most) and the time of a ``rollback`` and of loading the previous model from
its directory (what keeping only its path would cost a rollback). ``--no-trim`` skips
``release.return_freed_memory`` (the code before it, for comparison).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["run"]


def _rollup() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB" and parts[0] in ("Rss:", "Anonymous:", "Pss_File:"):
                out[parts[0].rstrip(":").lower()] = round(int(parts[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return out


def run(releases: int = 3, requests: int = 300, trim: bool = True) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import edge.sync.release as release
    from edge.app import bundled_catalogue, load_model_scorer
    from edge.config import NodeConfig
    from edge.ranking.ranker import DEFAULT_MODEL_DIR
    from edge.store import Store
    from edge.sync.canary import CanaryOptions, CanarySet
    from edge.sync.publish import build_release
    from edge.sync.room import default_loader

    if not trim:
        release.return_freed_memory = lambda: None  # the code before it
    tmp = Path(tempfile.mkdtemp(prefix="shelfcast-release-bench-"))
    store = None
    manager = None
    try:
        key = Ed25519PrivateKey.generate()
        pub = tmp / "release.pub"
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        cfg = NodeConfig.model_validate({
            "node": {"data_dir": str(tmp / "node"), "store_id": "s1", "node_id": "n1"},
            "model": {"public_key": str(pub)}, "signage": {"enabled": False}, "shelves": {"enabled": False}})
        store = Store(tmp / "node" / "shelfcast.db", flush_interval_ms=20).open()
        store.upsert_products(bundled_catalogue()).result(10)
        rec = SimpleNamespace(model=load_model_scorer(cfg, store))
        if rec.model is None:
            raise RuntimeError("the shipped model does not load here (edge.ranking and its runtime are needed)")
        steps: list[tuple[str, str, bool, str]] = []
        manager = release.ReleaseManager(
            tmp / "node", public_key=pub, loader=default_loader(cfg, store), get_model=lambda: rec.model,
            set_model=lambda m: setattr(rec, "model", m), report=lambda k, v, s, ok, d: steps.append((v, s, ok, d)),
            canary=CanarySet(store), canary_options=CanaryOptions(k=10))
        skus = [p.sku for p in bundled_catalogue()]

        def serve() -> None:
            model = rec.model
            for i in range(requests):
                visit = SimpleNamespace(customer=None, picked=skus[i % 50:i % 50 + 1 + i % 4], zone=None,
                                        session=f"bench-{i % 40}")
                model.score(visit, datetime.now(UTC), 10, set())

        def ranker(model: Any) -> Any:
            return getattr(getattr(model, "inner", model), "ranker", None)

        alive: list[tuple[str, weakref.ref[Any]]] = [(rec.model.version, weakref.ref(ranker(rec.model)))]
        serve()
        gc.collect()
        start = _rollup()
        rows: list[dict[str, Any]] = []
        for i in range(1, releases + 1):
            d = tmp / "src" / f"r{i}"
            shutil.copytree(DEFAULT_MODEL_DIR, d)
            man = json.loads((d / "manifest.json").read_text())
            man["version"] = version = f"{man.get('version', 'shipped')}-bench{i}"
            (d / "manifest.json").write_text(json.dumps(man))
            rel = build_release("model", d, None, key)
            shutil.rmtree(d)
            manager.on_manifest("model", json.dumps(rel.manifest).encode())
            for n, chunk in enumerate(rel.iter_chunks()):
                manager.on_chunk("model", n, chunk)
            del rel
            manager.wait_idle(300)
            if rec.model.version != version:
                raise RuntimeError(f"release {version} was not swapped in: {steps[-3:]}")
            alive.append((version, weakref.ref(ranker(rec.model))))
            serve()
            rows.append({"release": i, "version": version, **_rollup(),
                         "rankers_alive": [v for v, r in alive if r() is not None]})
        # a rollback as it is (the previous model in RAM), and what loading it from its directory would cost
        prev = manager.previous
        t0 = time.perf_counter()
        ok, _ = manager.rollback("bench")
        rollback_ms = (time.perf_counter() - t0) * 1000
        load_ms = None
        if prev is not None and prev.path is not None and manager.loader is not None:
            t0 = time.perf_counter()
            manager.loader(prev.path)
            load_ms = (time.perf_counter() - t0) * 1000
        return {"trim": trim, "requests_between": requests, "start": start, "releases": rows,
                "rollback_ok": ok, "rollback_ms": round(rollback_ms, 3),
                "load_previous_ms": round(load_ms, 1) if load_ms is not None else None}
    finally:
        if manager is not None:
            manager.close()
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.sync.release_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--releases", type=int, default=3, help="signed releases to apply (default 3)")
    ap.add_argument("--requests", type=int, default=300, help="requests served after each release (default 300)")
    ap.add_argument("--no-trim", action="store_true", help="do not return freed memory to the OS after a swap")
    ap.add_argument("--json", action="store_true", help="print JSON")
    a = ap.parse_args(argv)
    res = run(a.releases, a.requests, trim=not a.no_trim)
    if a.json:
        print(json.dumps(res))
        return 0
    s = res["start"]
    print(f"start: RSS {s.get('rss')} MB, anonymous {s.get('anonymous')} MB")
    for r in res["releases"]:
        print(f"after release {r['release']} ({r['version']}): RSS {r.get('rss')} MB, anonymous "
              f"{r.get('anonymous')} MB, rankers alive: {', '.join(r['rankers_alive'])}")
    print(f"rollback {res['rollback_ms']} ms (ok: {res['rollback_ok']}); loading the previous model from its "
          f"directory: {res['load_previous_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
