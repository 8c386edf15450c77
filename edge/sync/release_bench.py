"""What model releases leave in RAM, in one process: ``python -m edge.sync.release_bench --releases N [--json]``.

The node's release path without the network: a ``ReleaseManager`` with the real loader (``edge.ranking``) and the
real canary (cold requests from the bundled catalogue) serves the shipped model, takes N signed releases of it
(copies of ``models/shipped`` under new versions, built and signed as ``shelfcast model publish`` does, handed
over chunk by chunk as the link thread does) and serves requests between them. After each release it prints the
process's RSS and anonymous memory (``/proc/self/smaps_rollup``), the ``Ranker`` objects still alive (weak
references: serving + previous at most) and the time of a ``rollback`` and of loading the previous model from
its directory (what keeping only its path would cost a rollback). ``--boot``: a node starting on two released
models (``models/active.json`` naming a serving and a previous one, copies of the shipped model): the bundled
model is loaded and serves first, then ``activate_on_boot`` loads both on another thread and drops the bundled one;
it prints what the bundled model cost and what the boot added after it (about one model: two loaded, one dropped).
``--no-trim`` skips ``release.return_freed_memory`` (the code before it, for comparison).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["run", "run_boot"]


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
        serve_model = _served(requests)

        def serve() -> None:
            serve_model(rec.model)

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


def _served(requests: int) -> Any:
    from edge.app import bundled_catalogue

    skus = [p.sku for p in bundled_catalogue()]

    def serve(model: Any) -> None:
        for i in range(requests):
            visit = SimpleNamespace(customer=None, picked=skus[i % 50:i % 50 + 1 + i % 4], zone=None,
                                    session=f"bench-{i % 40}")
            model.score(visit, datetime.now(UTC), 10, set())

    return serve


def run_boot(requests: int = 300, trim: bool = True) -> dict[str, Any]:
    """A start on two released models (see the module doc): anonymous memory the bundled model took, and what
    the boot added after it."""
    import edge.sync.release as release
    from edge.app import bundled_catalogue, load_model_scorer
    from edge.config import NodeConfig
    from edge.ranking.ranker import DEFAULT_MODEL_DIR
    from edge.store import Store
    from edge.sync.room import default_loader

    if not trim:
        release.return_freed_memory = lambda: None
    tmp = Path(tempfile.mkdtemp(prefix="shelfcast-release-bench-"))
    store = None
    manager = None
    try:
        models = tmp / "node" / "models"
        models.mkdir(parents=True)
        for v in ("boot-1", "boot-2"):  # installed as a release is (files.json: what _intact checks)
            d = models / v
            shutil.copytree(DEFAULT_MODEL_DIR, d)
            man = json.loads((d / "manifest.json").read_text())
            man["version"] = v
            (d / "manifest.json").write_text(json.dumps(man))
            (d / "files.json").write_text(json.dumps({"version": v, "sha256": "", "files": release._tree_digest(d)}))
        (models / "active.json").write_text(json.dumps({"version": "boot-2", "path": str(models / "boot-2"),
                                                        "previous": {"version": "boot-1",
                                                                     "path": str(models / "boot-1")}}))
        cfg = NodeConfig.model_validate({
            "node": {"data_dir": str(tmp / "node"), "store_id": "s1", "node_id": "n1"},
            "signage": {"enabled": False}, "shelves": {"enabled": False}})
        store = Store(tmp / "node" / "shelfcast.db", flush_interval_ms=20).open()
        store.upsert_products(bundled_catalogue()).result(10)
        serve = _served(requests)
        gc.collect()
        a0 = _rollup().get("anonymous", 0.0)
        rec = SimpleNamespace(model=load_model_scorer(cfg, store))
        if rec.model is None:
            raise RuntimeError("the shipped model does not load here (edge.ranking and its runtime are needed)")
        serve(rec.model)
        a1 = _rollup().get("anonymous", 0.0)
        bundled = weakref.ref(rec.model.ranker)
        manager = release.ReleaseManager(
            tmp / "node", public_key=None, loader=default_loader(cfg, store), get_model=lambda: rec.model,
            set_model=lambda m: setattr(rec, "model", m), report=lambda k, v, s, ok, d: None)
        served: list[str | None] = []
        t = threading.Thread(target=lambda: served.append(manager.activate_on_boot()))  # the room's to_thread
        t.start()
        t.join()
        serve(rec.model)
        a2 = _rollup().get("anonymous", 0.0)
        return {"trim": trim, "serving": served[0] if served else None,
                "previous": manager.previous.version if manager.previous else None,
                "bundled_alive": bundled() is not None, "bundled_mb": round(a1 - a0, 1),
                "boot_mb": round(a2 - a1, 1)}
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
    ap.add_argument("--boot", action="store_true", help="a start on two released models instead")
    ap.add_argument("--json", action="store_true", help="print JSON")
    a = ap.parse_args(argv)
    if a.boot:
        boot = run_boot(a.requests, trim=not a.no_trim)
        print(json.dumps(boot) if a.json else
              f"bundled model {boot['bundled_mb']} MB; the boot on {boot['serving']} (previous {boot['previous']}) "
              f"added {boot['boot_mb']} MB; bundled model still alive: {boot['bundled_alive']}")
        return 0
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
