"""Commands: ``cloud ingest``, ``model publish``, ``model keygen``, ``bench sync``."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.cli import CommandRegistry, UserError, print_json

__all__ = ["register"]


def _tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-file", type=Path, default=None, help="CA certificate (PEM) for mqtts://")
    p.add_argument("--cert-file", type=Path, default=None, help="client certificate (PEM)")
    p.add_argument("--key-file", type=Path, default=None, help="client private key (PEM)")
    p.add_argument("--username", default=None)
    p.add_argument("--password-env", default=None, metavar="NAME",
                   help="read the broker password from this environment variable (never on the command line)")


def register(reg: CommandRegistry) -> None:
    p = reg.subcommand("cloud", "ingest", "subscribe to node batches, dedupe by id, write Parquet", _ingest)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for Parquet files")
    p.add_argument("--topic", default="shelfcast/v1/#", help="subscription filter (default: shelfcast/v1/#)")
    p.add_argument("--client-id", default="shelfcast-ingest", help="persistent-session client id")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--expect", type=int, default=None, metavar="N", help="stop once N unique items arrived")
    p.add_argument("--flush-s", type=float, default=0.5, metavar="SECONDS",
                   help="write a Parquet file (and acknowledge its messages) at least this often")
    _tls_args(p)

    p = reg.subcommand("model", "publish", "sign (Ed25519) and publish a release: manifest + chunks ≤ 128 KB",
                       _publish)
    p.add_argument("--broker", required=True, metavar="URL")
    p.add_argument("--store", required=True, help="store id of the target node(s)")
    p.add_argument("--node", default="_all", help="node id, or _all for every node of the store (default)")
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="model directory (model.tflite + manifest.json), a .tflite file, or a JSON snapshot")
    p.add_argument("--kind", default="model",
                   choices=["model", "catalogue", "planogram", "stock", "profiles", "promotions"],
                   help="what --model holds: a model, or a JSON snapshot of that kind (docs/mqtt.md has the formats)")
    p.add_argument("--version", default=None,
                   help="release version; nodes refuse one older than what they accepted (default: the model "
                        "manifest's, else the UTC time YYYY.MM.DD-HHMMSS). A model directory published under "
                        "another version than its manifest's gets that version and a new created in its "
                        "manifest (how an old model is rolled out again)")
    p.add_argument("--sign-key", type=Path, required=True, metavar="FILE",
                   help="Ed25519 private key (PEM) from `shelfcast model keygen`")
    p.add_argument("--chunk-size", type=int, default=120 * 1024, metavar="BYTES")
    p.add_argument("--client-id", default="shelfcast-publisher")
    _tls_args(p)

    p = reg.subcommand("model", "keygen", "make an Ed25519 key pair for signing releases", _keygen)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--name", default="release-signing")
    p.add_argument("--force", action="store_true",
                   help="replace an existing key pair of that name (every node pinned to the old .pub then refuses "
                        "new releases until it is re-provisioned)")

    p = reg.subcommand("bench", "sync", "outbox → broker → ingest through a broker outage", _bench)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--events-per-s", type=float, default=500.0)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--before-s", type=float, default=5.0, help="sending time before the outage")
    p.add_argument("--after-s", type=float, default=5.0, help="sending time after the broker returns")
    p.add_argument("--ordered-ids", action="store_true",
                   help="use time-ordered event ids instead of uuid4 (shows the SD-wear effect of id order)")


def _settings(args: argparse.Namespace, client_id: str):  # type: ignore[no-untyped-def]
    import os
    import re

    from edge.sync.link import LinkSettings

    if not re.fullmatch(r"mqtts?://[^/:\s]+(:\d{1,5})?/?", args.broker):
        raise UserError(f"--broker {args.broker!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    pw = None
    if args.password_env:
        if args.password_env not in os.environ:
            raise UserError(f"environment variable {args.password_env} is not set; export it first")
        pw = os.environ[args.password_env]
    return LinkSettings(url=args.broker.rstrip("/"), client_id=client_id, username=args.username, password=pw,
                        ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                        config_key="--ca-file/--cert-file/--key-file", connack_timeout_s=10.0)


def _ingest(args: argparse.Namespace) -> int:
    from edge.sync.ingest import Ingest, MissingDependency, require_pyarrow

    try:
        require_pyarrow()  # a cloud-side package, not in the node install: say so before --out or the broker
    except MissingDependency as exc:
        raise UserError(str(exc)) from None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use --out {args.out}: {exc.strerror}; pick a writable directory") from None
    if args.flush_s <= 0:
        raise UserError("--flush-s must be a positive number of seconds")
    ing = Ingest(_settings(args, args.client_id), args.out, topic=args.topic, flush_s=args.flush_s)
    # a plain flag, not threading.Event: the handler runs on the main thread, and Event.set() there can
    # deadlock when the signal lands while the same thread holds the Event's lock inside Event.wait()
    # (seen once in CI: SIGTERM ignored, the ingest never exited)
    stop = [False]

    def on_signal(*_: object) -> None:
        stop[0] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    ing.start()
    t0 = time.monotonic()
    announced = False
    last_error = None
    while not stop[0]:
        if args.duration is not None and time.monotonic() - t0 >= args.duration:
            break
        if args.expect is not None and ing.stats["unique"] >= args.expect:
            break
        if not announced and ing.link.subscribed.is_set():
            announced = True
            print(f"ingest: subscribed to {args.topic} on {args.broker}", file=sys.stderr, flush=True)
        if ing.link.last_error and ing.link.last_error != last_error:
            last_error = ing.link.last_error  # the link retries by itself; say why it is down
            print(f"ingest: {last_error}", file=sys.stderr, flush=True)
        time.sleep(0.05)  # a signal interrupts it; the handler runs, the loop sees the flag
    stats = ing.stop()
    stats["out"] = str(args.out)
    stats["error"] = ing.link.last_error
    print_json(stats)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from edge.sync.publish import build_release, load_private_key, publish_release
    from edge.sync.topics import Topics

    if not args.model.exists():
        raise UserError(f"--model {args.model} does not exist")
    try:
        key = load_private_key(args.sign_key)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot use --sign-key {args.sign_key}: {exc}") from None
    model_dir = args.kind == "model" and args.model.is_dir()
    # nodes refuse a release older than the one they accepted (edge.sync.release): versions must grow, so the
    # default is the time, not a hash (a model directory keeps its manifest's version, which the export dates)
    version = args.version or (None if model_dir else time.strftime("%Y.%m.%d-%H%M%S", time.gmtime()))
    with tempfile.TemporaryDirectory(prefix="shelfcast-publish-") as tmp:
        source, restamped = args.model, None
        if model_dir and args.version:
            source, restamped = _restamp(args.model, args.version, Path(tmp))
        try:
            rel = build_release(args.kind, source, version, key, chunk_size=args.chunk_size)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    topics = Topics("shelfcast/v1", args.store, args.node)
    try:
        out = publish_release(_settings(args, args.client_id), topics, rel)
    except RuntimeError as exc:
        raise UserError(str(exc), code=3) from None
    if restamped is not None:
        out["restamped_from"] = restamped
    print_json(out)
    return 0


def _restamp(model: Path, version: str, tmp: Path) -> tuple[Path, dict[str, Any] | None]:
    """A model directory published under another version than its manifest's: a copy whose manifest carries
    that version and a new ``created`` (what nodes order models by), so an old model can be rolled out again
    as a newer release. The weights and their sha256 stay; the old version and created are kept in
    ``restamped_from``."""
    mf = model / "manifest.json"
    if not mf.exists():
        return model, None
    try:
        man = json.loads(mf.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {model}: manifest.json is unreadable ({exc}); re-export the model") from None
    if not isinstance(man, dict) or man.get("version") == version:
        return model, None
    out = tmp / "model"
    shutil.copytree(model, out)
    before = {"version": man.get("version"), "created": man.get("created")}
    man.update(version=version, created=datetime.now(UTC).isoformat(timespec="seconds"), restamped_from=before)
    (out / "manifest.json").write_text(json.dumps(man))
    return out, before


def _keygen(args: argparse.Namespace) -> int:
    from edge.sync.publish import keygen

    existing = [p for p in (args.out / f"{args.name}.key", args.out / f"{args.name}.pub") if p.exists()]
    if existing and not args.force:
        # the signing key is what every node in the field trusts: a second keygen in the same place would lose it
        raise UserError(f"{existing[0]} exists: keeping it (nodes pinned to its .pub refuse releases signed by any "
                        "other key); to make another pair use another --out or --name, or pass --force to replace it "
                        "and then re-pin the new .pub on every node (`sudo shelfcast provision --model-key …`)")
    try:
        priv, pub = keygen(args.out, args.name)
    except OSError as exc:
        raise UserError(f"cannot write the key pair into --out {args.out}: {exc.strerror or exc}; "
                        "pick a writable directory (keep the .key offline)") from None
    print_json({"private_key": str(priv), "public_key": str(pub),
                "hint": f"pin the .pub on each node: `sudo shelfcast provision --model-key {pub.name}` (it sets "
                        "model.public_key; store ops hand the file to the technicians as model-signing.pub); keep "
                        "the .key offline"})
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edge.sync.bench import run_bench
    from edge.sync.ingest import MissingDependency

    if args.outage_s < 0 or args.events_per_s <= 0:
        raise UserError("--outage-s must be ≥ 0 and --events-per-s > 0")
    # SIGTERM (kill, timeout(1), systemd) ends the run like Ctrl-C (exit 130): the bench's event loop cancels it,
    # and its cleanup stops the broker and the ingest it started (edge.sync.bench._on_signals); until that loop
    # runs (the pyarrow check) SIGTERM is Ctrl-C here, whether or not SIGINT was inherited ignored
    def before_loop(*_: object) -> None:
        raise KeyboardInterrupt

    prev = signal.signal(signal.SIGTERM, before_loop)
    try:
        res = run_bench(events_per_s=args.events_per_s, outage_s=args.outage_s, before_s=args.before_s,
                        after_s=args.after_s, progress=None if args.json else sys.stderr,
                        ordered_ids=args.ordered_ids)
    except MissingDependency as exc:  # checked before anything starts
        raise UserError(f"bench sync: {exc}") from None
    except RuntimeError as exc:  # no mosquitto binary, ingest did not start, …
        raise UserError(f"bench sync: {exc}", code=3) from None
    finally:
        signal.signal(signal.SIGTERM, prev)
    if args.json:
        print_json(res)
    else:
        print(json.dumps(res, indent=2))
    return 0 if res.get("lost", 1) == 0 else 3
